"""Runtime configuration of the emulator.

One mutable object shared by the queue, the apps and the admin endpoint, so a test can change
concurrency or pacing of a running emulator without restarting it. Every value, at start-up and on
each update, passes one strict schema: a wrong type or range is refused whole and changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from fal_provider.emulator.validation import STRICT, InvalidSettings, validated

DEFAULT_CONCURRENCY = 4

_Slots = Annotated[int, Field(ge=1, le=10_000)]
_NoControlChars = r"^[^\x00-\x1f\x7f]+$"


class ConfigSchema(BaseModel):
    """The allowed types and ranges of :class:`EmulatorConfig`'s fields."""

    model_config = STRICT

    # key_id:key_secret, as fal issues them; the value is never quoted in an error.
    key: Annotated[str, StringConstraints(pattern=r"^[^:\s]+:[^:\s]+$")] | None
    admin_key: Annotated[str, StringConstraints(pattern=r"^[^:\s]+:[^:\s]+$")] | None
    concurrency: _Slots
    app_concurrency: dict[Annotated[str, StringConstraints(min_length=1)], _Slots]
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

    def update(self, changes: Any) -> None:
        """Apply a partial update (``app_concurrency`` entries are merged) only if the result is valid.

        Raises :class:`~fal_provider.emulator.validation.InvalidSettings` naming each bad or unknown
        field; the config is then untouched.
        """
        if not isinstance(changes, dict):
            message = "expected a JSON object of config fields"
            raise InvalidSettings("config", [{"field": "(body)", "message": message, "type": "dict_type"}])
        merged = {**asdict(self), **changes}
        if isinstance(changes.get("app_concurrency"), dict):
            merged["app_concurrency"] = {**self.app_concurrency, **changes["app_concurrency"]}
        checked = validated(ConfigSchema, merged, "config")
        for name in changes:
            setattr(self, name, getattr(checked, name))

    def public_view(self) -> dict[str, Any]:
        """Everything except the key, which never leaves the process."""
        view = asdict(self)
        view["key"] = "***" if self.key else None
        view["admin_key"] = "***" if self.admin_key else None
        return view
