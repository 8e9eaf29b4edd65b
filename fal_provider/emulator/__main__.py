"""``python -m fal_provider.emulator`` is the same as ``fal-emulator``."""

from __future__ import annotations

import sys

from fal_provider.emulator.cli import main

sys.exit(main())
