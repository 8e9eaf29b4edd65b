"""A local fal.ai emulator: queue, run, stream, realtime, CDN, JWKS and signed webhooks on one port.

Kept import-free so the pytest plugin stays cheap; use ``fal_provider.emulator.testing.run_emulator``
in code and ``fal-emulator`` on the command line. See README.md in this package.
"""
