"""Runtime configuration of the emulator.

One mutable object shared by the queue, the apps and the admin endpoint, so a test can change
concurrency or pacing of a running emulator without restarting it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_CONCURRENCY = 4


@dataclass
class EmulatorConfig:
    """Knobs of one emulator instance; every field can be changed at runtime via ``/_emulator/config``."""

    key: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    app_concurrency: dict[str, int] = field(default_factory=dict)
    latency_scale: float = 1.0
    ping_interval_s: float = 15.0
    webhook_attempts: int = 5
    webhook_base_delay_s: float = 0.5
    webhook_timeout_s: float = 10.0
    llm_token_interval_s: float = 0.01
    user_id: str = "emulator-user"
    public_url: str | None = None

    def concurrency_for(self, app_id: str) -> int:
        """Per-app override first (exact endpoint id or its ``owner/app`` base), else the global value."""
        if app_id in self.app_concurrency:
            return max(1, int(self.app_concurrency[app_id]))
        base = "/".join(app_id.split("/")[:2])
        if base in self.app_concurrency:
            return max(1, int(self.app_concurrency[base]))
        return max(1, int(self.concurrency))

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; unknown names raise so typos in tests are loud."""
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"Unknown config fields: {sorted(unknown)}")
        for name, value in changes.items():
            if name == "app_concurrency":
                self.app_concurrency.update({str(k): int(v) for k, v in dict(value).items()})
            else:
                setattr(self, name, value)

    def public_view(self) -> dict[str, Any]:
        """Everything except the key, which never leaves the process."""
        view = asdict(self)
        view["key"] = "***" if self.key else None
        return view
