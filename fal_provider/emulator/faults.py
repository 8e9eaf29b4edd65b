"""Deterministic fault injection: the failures a fal client must survive, on demand.

A rule fires either for a fraction of matching calls (seeded RNG, so a run is reproducible)
or for exactly the next ``count`` matching calls. Rules can be narrowed to endpoint kinds and apps.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

ENDPOINT_KINDS = (
    "submit",
    "status",
    "status_stream",
    "result",
    "cancel",
    "run",
    "stream",
    "token",
    "upload",
    "webhook",
)
HTTP_KINDS = ("429", "500", "502", "503", "slow", "drop", "drop_mid")
WEBHOOK_KINDS = ("webhook_drop", "webhook_duplicate")
FAULT_KINDS = HTTP_KINDS + WEBHOOK_KINDS


@dataclass
class FaultRule:
    """One kind of failure and where it applies."""

    kind: str
    rate: float = 0.0
    count: int | None = None
    endpoints: list[str] | None = None
    apps: list[str] | None = None
    retry_after: float = 1.0
    delay_s: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        for endpoint in self.endpoints or []:
            if endpoint not in ENDPOINT_KINDS:
                raise ValueError(f"Unknown endpoint kind {endpoint!r}; expected one of {ENDPOINT_KINDS}")
        if self.count is None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")

    def matches(self, endpoint: str, app_id: str | None) -> bool:
        if self.kind in WEBHOOK_KINDS and endpoint != "webhook":
            return False
        if self.kind in HTTP_KINDS and endpoint == "webhook":
            return False
        if self.endpoints and endpoint not in self.endpoints:
            return False
        return not (self.apps and not _app_matches(app_id, self.apps))


def _app_matches(app_id: str | None, apps: list[str]) -> bool:
    if app_id is None:
        return False
    return any(app_id == app or app_id.startswith(app.rstrip("/") + "/") for app in apps)


@dataclass
class FaultConfig:
    """All active rules plus the seed of the RNG that decides fractional rules."""

    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @classmethod
    def from_json(cls, data: dict[str, Any] | list[Any] | None) -> FaultConfig:
        """Accept ``{"seed":..,"rules":[..]}``, a bare rule list, or a single rule object."""
        if not data:
            return cls()
        if isinstance(data, list):
            data = {"rules": data}
        elif "kind" in data:
            data = {"rules": [data]}
        rules = [FaultRule(**rule) for rule in data.get("rules", [])]
        return cls(rules=rules, seed=int(data.get("seed", 0)))

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "rules": [asdict(rule) for rule in self.rules]}

    def pick(self, endpoint: str, app_id: str | None = None) -> FaultRule | None:
        """The first rule that fires for this call; counted rules are consumed as they fire."""
        for rule in self.rules:
            if not rule.matches(endpoint, app_id):
                continue
            if rule.count is not None:
                if rule.count > 0:
                    rule.count -= 1
                    return rule
                continue
            if rule.rate > 0 and self._rng.random() < rule.rate:
                return rule
        return None


def parse_cli_fault(text: str) -> dict[str, Any]:
    """``kind[:rate][@endpoint,endpoint][#count]`` e.g. ``429:0.2@submit,status`` or ``503#2@result``."""
    rule: dict[str, Any] = {}
    if "@" in text:
        text, endpoints = text.split("@", 1)
        rule["endpoints"] = [e for e in endpoints.split(",") if e]
    if "#" in text:
        text, count = text.split("#", 1)
        rule["count"] = int(count)
    kind, _, rate = text.partition(":")
    rule["kind"] = kind
    if rate:
        rule["rate"] = float(rate)
    elif "count" not in rule:
        rule["rate"] = 1.0
    return rule
