"""Runtime configuration of the emulator.

One mutable object shared by the queue, the apps and the admin endpoint, so a test can change
concurrency or pacing of a running emulator without restarting it. Every value, at start-up and on
each update, passes one strict schema: a wrong type or range is refused whole and changes nothing.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from fal_provider.emulator.validation import STRICT, InvalidSettings, validated

DEFAULT_CONCURRENCY = 4

_Slots = Annotated[int, Field(ge=1, le=10_000)]
_Seconds = Annotated[float, Field(ge=0.0, le=86_400.0)]
#: A per-app latency distribution: log-normal through its median and 95th percentile (seconds).
_Latency = dict[Literal["median_s", "p95_s"], _Seconds]
#: fal keeps a queue result 1 hour after completion, 6 minutes once it is 10 KB or more.
RESULT_TTL_S = 3600.0
LARGE_RESULT_TTL_S = 360.0
LARGE_RESULT_BYTES = 10 * 1024
_NoControlChars = r"^[^\x00-\x1f\x7f]+$"


class ConfigSchema(BaseModel):
    """The allowed types and ranges of :class:`EmulatorConfig`'s fields."""

    model_config = STRICT

    # key_id:key_secret, as fal issues them; the value is never quoted in an error.
    key: Annotated[str, StringConstraints(pattern=r"^[^:\s]+:[^:\s]+$")] | None
    admin_key: Annotated[str, StringConstraints(pattern=r"^[^:\s]+:[^:\s]+$")] | None
    concurrency: _Slots
    app_concurrency: dict[Annotated[str, StringConstraints(min_length=1)], _Slots]
    account_concurrency: _Slots | None
    result_ttl_s: float = Field(gt=0.0)
    large_result_ttl_s: float = Field(gt=0.0)
    large_result_bytes: int = Field(ge=1)
    app_latency: dict[Annotated[str, StringConstraints(min_length=1)], _Latency]
    latency_scale: float = Field(ge=0.0, le=10_000.0)
    ping_interval_s: float = Field(gt=0.0, le=3600.0)
    webhook_attempts: int = Field(ge=1, le=100)
    webhook_base_delay_s: float = Field(ge=0.0, le=3600.0)
    webhook_timeout_s: float = Field(gt=0.0, le=3600.0)
    llm_token_interval_s: float = Field(ge=0.0, le=60.0)
    # Sent as the X-Fal-Webhook-User-Id header, so no CR/LF.
    user_id: Annotated[str, StringConstraints(pattern=_NoControlChars)]
    public_url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+\S*$")] | None


@dataclass
class EmulatorConfig:
    """Knobs of one emulator instance; every field can be changed at runtime via ``/_emulator/config``."""

    key: str | None = None
    #: The ADMIN-scoped key of the Platform API (billing events); it may call API-scoped ones too.
    admin_key: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    app_concurrency: dict[str, int] = field(default_factory=dict)
    #: Requests IN_PROGRESS at once across every app (fal's account limit); ``None``: no limit.
    account_concurrency: int | None = None
    #: Result retention after completion; scale both down to test expiry in seconds.
    result_ttl_s: float = RESULT_TTL_S
    large_result_ttl_s: float = LARGE_RESULT_TTL_S
    large_result_bytes: int = LARGE_RESULT_BYTES
    #: Extra run time per app (``{"owner/app": {"median_s": 2, "p95_s": 6}}``), for benchmarks.
    app_latency: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_scale: float = 1.0
    ping_interval_s: float = 15.0
    webhook_attempts: int = 5
    webhook_base_delay_s: float = 0.5
    webhook_timeout_s: float = 10.0
    llm_token_interval_s: float = 0.01
    user_id: str = "emulator-user"
    public_url: str | None = None

    def __post_init__(self) -> None:
        validated(ConfigSchema, asdict(self), "emulator config")

    def concurrency_for(self, app_id: str) -> int:
        """Per-app override first (exact endpoint id or its ``owner/app`` base), else the global value."""
        if app_id in self.app_concurrency:
            return self.app_concurrency[app_id]
        base = "/".join(app_id.split("/")[:2])
        return self.app_concurrency.get(base, self.concurrency)

    def result_ttl(self, size: int) -> float:
        """How long a result of ``size`` bytes stays fetchable after completion."""
        return self.large_result_ttl_s if size >= self.large_result_bytes else self.result_ttl_s

    def sample_latency(self, app_id: str, rng: random.Random) -> float:
        """Seconds of extra run time for one request of ``app_id`` (0 without a distribution)."""
        base = "/".join(app_id.split("/")[:2])
        spec = self.app_latency.get(app_id) or self.app_latency.get(base)
        if not spec:
            return 0.0
        median = spec.get("median_s", 0.0)
        p95 = max(spec.get("p95_s", median), median)
        if median <= 0:
            return 0.0
        sigma = math.log(p95 / median) / 1.645 if p95 > median else 0.0
        return median * math.exp(sigma * rng.gauss(0.0, 1.0)) * self.latency_scale

    def update(self, changes: Any) -> None:
        """Apply a partial update (``app_concurrency`` entries are merged) only if the result is valid.

        Raises :class:`~fal_provider.emulator.validation.InvalidSettings` naming each bad or unknown
        field; the config is then untouched.
        """
        if not isinstance(changes, dict):
            message = "expected a JSON object of config fields"
            raise InvalidSettings("config", [{"field": "(body)", "message": message, "type": "dict_type"}])
        merged = {**asdict(self), **changes}
        for name in ("app_concurrency", "app_latency"):
            if isinstance(changes.get(name), dict):
                merged[name] = {**getattr(self, name), **changes[name]}
        checked = validated(ConfigSchema, merged, "config")
        for name in changes:
            setattr(self, name, getattr(checked, name))

    def public_view(self) -> dict[str, Any]:
        """Everything except the key, which never leaves the process."""
        view = asdict(self)
        view["key"] = "***" if self.key else None
        view["admin_key"] = "***" if self.admin_key else None
        return view
