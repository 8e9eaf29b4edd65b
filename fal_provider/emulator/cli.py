"""``fal-emulator``: serve the local fal emulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from fal_provider.emulator.config import DEFAULT_CONCURRENCY, EmulatorConfig
from fal_provider.emulator.faults import FAULT_KINDS, LOST_ANSWERS, FaultConfig, parse_cli_fault


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fal-emulator",
        description="Local stand-in for fal.ai: queue, run, stream, realtime, CDN, JWKS and webhooks "
        "on one port (hosts under /queue, /run, /rest, /cdn, /platform/v1; control under /_emulator).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default 8765)")
    parser.add_argument(
        "--key",
        default=None,
        help="accepted fal key 'key_id:key_secret'; without it any well-formed key is accepted",
    )
    parser.add_argument(
        "--admin-key",
        default=None,
        help="the ADMIN-scoped key of /platform/v1 (billing events); the --key is API-scoped only",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"runner slots per app (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--app-concurrency",
        action="append",
        default=[],
        metavar="APP=N",
        help="runner slots for one app, e.g. fal-ai/flux/dev=1 (repeatable)",
    )
    parser.add_argument(
        "--signing-key-file",
        default=None,
        help="PEM Ed25519 webhook signing key; created if missing so processes can share it",
    )
    parser.add_argument(
        "--latency-scale",
        type=float,
        default=1.0,
        help="multiplier for model stand-in durations (0 = instant)",
    )
    parser.add_argument(
        "--ping-interval", type=float, default=15.0, help="seconds between SSE ': ping' keep-alives"
    )
    parser.add_argument(
        "--webhook-attempts", type=int, default=5, help="webhook delivery attempts (default 5)"
    )
    parser.add_argument(
        "--webhook-base-delay", type=float, default=0.5, help="first webhook retry delay, doubled per attempt"
    )
    parser.add_argument(
        "--llm-token-interval", type=float, default=0.01, help="seconds between fal-ai/any-llm tokens"
    )
    parser.add_argument("--user-id", default="emulator-user", help="X-Fal-Webhook-User-Id value")
    parser.add_argument(
        "--public-url",
        default=None,
        help="base URL put in response/status/file URLs when clients reach the emulator by another name",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help=(
            "inject a fault: KIND[/ANSWER][:RATE][#COUNT][@ENDPOINT,...], e.g. 429:0.1@submit, "
            "503#2@result, or after_accept/502#1@submit (the submit is queued, then its answer is "
            f"lost as {'|'.join(LOST_ANSWERS)}); kinds: {', '.join(FAULT_KINDS)} (repeatable)"
        ),
    )
    parser.add_argument("--faults-json", default=None, help='full fault config JSON {"seed":..,"rules":[..]}')
    parser.add_argument("--seed", type=int, default=0, help="seed for fractional faults (default 0)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[EmulatorConfig, FaultConfig]:
    app_concurrency: dict[str, int] = {}
    for item in args.app_concurrency:
        app, _, count = item.rpartition("=")
        app_concurrency[app] = int(count)
    config = EmulatorConfig(
        key=args.key,
        admin_key=args.admin_key,
        concurrency=args.concurrency,
        app_concurrency=app_concurrency,
        latency_scale=args.latency_scale,
        ping_interval_s=args.ping_interval,
        webhook_attempts=args.webhook_attempts,
        webhook_base_delay_s=args.webhook_base_delay,
        llm_token_interval_s=args.llm_token_interval,
        user_id=args.user_id,
        public_url=args.public_url,
    )
    fault_data: Any = json.loads(args.faults_json) if args.faults_json else {"rules": []}
    if not isinstance(fault_data, dict):
        raise ValueError('--faults-json must be an object {"seed": .., "rules": [..]}')
    fault_data.setdefault("seed", args.seed)
    fault_data["rules"] = [*fault_data.get("rules", []), *(parse_cli_fault(s) for s in args.fault)]
    return config, FaultConfig.from_json(fault_data)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, faults = config_from_args(args)
    except ValueError as exc:
        print(f"fal-emulator: {exc}", file=sys.stderr)
        return 2
    from fal_provider.emulator.app import create_app
    from fal_provider.emulator.server import bind_socket, make_server
    from fal_provider.emulator.webhooks import load_or_create_signing_key

    signing_key = load_or_create_signing_key(args.signing_key_file) if args.signing_key_file else None
    app = create_app(config, faults, signing_key)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    server = make_server(app, log_level=args.log_level)
    print(f"fal-emulator listening on http://{host}:{port}", flush=True)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
