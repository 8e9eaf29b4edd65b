"""A real JWKS host on a loopback port that counts its hits, can be slow and can fail."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fal_provider.emulator.webhooks import jwks


class CountingJWKS:
    """``status`` 200 serves ``keys``; anything else answers that status. ``release`` gates answers."""

    def __init__(self, *keys: Ed25519PrivateKey, status: int = 200) -> None:
        self.keys = list(keys)
        self.status = status
        self.hits = 0
        self.release = threading.Event()
        self.release.set()
        self.arrived = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner.arrived:
                    owner.hits += 1
                    owner.arrived.notify_all()
                owner.release.wait(30)
                body = json.dumps(jwks(owner.keys)).encode() if owner.status == 200 else b"{}"
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def wait_for_hits(self, count: int, timeout: float = 10) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.hits >= count, timeout), f"only {self.hits} hit(s)"

    def __enter__(self) -> CountingJWKS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
