"""Deterministic fault injection: the failures a fal client must survive, on demand.

A rule fires either for a fraction of matching calls (seeded RNG, so a run is reproducible)
or for exactly the next ``count`` matching calls. Rules can be narrowed to endpoint kinds and apps.

Most kinds fire before the call is accepted (a gateway refusing it). ``after_accept`` is the other
half of the story: the call does its work (the submit is queued and billed, the cancel applied) and
only then is the answer lost, so a client that resends a non-idempotent call pays twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, model_validator

from fal_provider.emulator.validation import STRICT, validated

EndpointKind = Literal[
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
    "platform",
]
HttpKind = Literal["429", "500", "502", "503", "slow", "drop", "drop_mid", "after_accept"]
WebhookKind = Literal["webhook_drop", "webhook_duplicate"]
FaultKind = Literal[HttpKind, WebhookKind]
#: How the answer of an accepted call is lost: a reset connection, or a gateway error page.
LostAnswer = Literal["drop", "502", "504"]

ENDPOINT_KINDS: tuple[str, ...] = get_args(EndpointKind)
HTTP_KINDS: tuple[str, ...] = get_args(HttpKind)
WEBHOOK_KINDS: tuple[str, ...] = get_args(WebhookKind)
FAULT_KINDS = HTTP_KINDS + WEBHOOK_KINDS
LOST_ANSWERS: tuple[str, ...] = get_args(LostAnswer)


class FaultRule(BaseModel):
    """One kind of failure and where it applies; ``count`` is consumed as the rule fires."""

    model_config = STRICT

    kind: FaultKind
    rate: float = Field(default=0.0, ge=0.0, le=1.0)
    count: int | None = Field(default=None, ge=0)
    endpoints: list[EndpointKind] | None = None
    apps: list[str] | None = None
    retry_after: float = Field(default=1.0, ge=0.0, le=3600.0)
    delay_s: float = Field(default=1.0, ge=0.0, le=600.0)
    answer: LostAnswer = "drop"

    @model_validator(mode="after")
    def _consistent(self) -> FaultRule:
        if "answer" in self.model_fields_set and self.kind != "after_accept":
            raise ValueError("'answer' applies only to kind 'after_accept'")
        if "rate" in self.model_fields_set and self.count is not None:
            raise ValueError("give either 'rate' or 'count', not both")
        if self.kind in WEBHOOK_KINDS and any(e != "webhook" for e in self.endpoints or []):
            raise ValueError(f"kind {self.kind!r} fires only on the 'webhook' endpoint")
        if self.kind in HTTP_KINDS and "webhook" in (self.endpoints or []):
            raise ValueError(f"kind {self.kind!r} is an HTTP fault; 'webhook' takes webhook_drop/_duplicate")
        if any(not app.strip() for app in self.apps or []):
            raise ValueError("'apps' entries must be non-empty endpoint ids")
        return self

    def matches(self, endpoint: str, app_id: str | None) -> bool:
        if self.kind in WEBHOOK_KINDS and endpoint != "webhook":
            return False
        if self.kind in HTTP_KINDS and endpoint == "webhook":
            return False
        if self.endpoints and endpoint not in self.endpoints:
            return False
        return not (self.apps and not _app_matches(app_id, self.apps))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude=None if self.kind == "after_accept" else {"answer"})


class FaultBody(BaseModel):
    """``POST /_emulator/faults`` in its full form."""

    model_config = STRICT

    seed: int = 0
    rules: list[FaultRule] = Field(default_factory=list)


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
    def from_json(cls, data: Any) -> FaultConfig:
        """Accept ``{"seed":..,"rules":[..]}``, a bare rule list, or a single rule object.

        Raises :class:`~fal_provider.emulator.validation.InvalidSettings` naming the bad field.
        """
        if data is None or data == {} or data == []:
            return cls()
        if isinstance(data, list):
            data = {"rules": data}
        elif isinstance(data, dict) and "kind" in data:
            data = {"rules": [data]}
        body = validated(FaultBody, data, "fault config")
        return cls(rules=body.rules, seed=body.seed)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "rules": [rule.to_json() for rule in self.rules]}

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
    """``kind[/answer][:rate][#count][@endpoint,…]``, e.g. ``429:0.2@submit,status``, ``503#2@result``
    or ``after_accept/502#1@submit``. Checked by :meth:`FaultConfig.from_json` like any other body."""
    rule: dict[str, Any] = {}
    if "@" in text:
        text, endpoints = text.split("@", 1)
        rule["endpoints"] = [e for e in endpoints.split(",") if e]
    if "#" in text:
        text, count = text.split("#", 1)
        rule["count"] = _cli_number(int, count, "count")
    kind, _, rate = text.partition(":")
    kind, _, answer = kind.partition("/")
    rule["kind"] = kind
    if answer:
        rule["answer"] = answer
    if rate:
        rule["rate"] = _cli_number(float, rate, "rate")
    elif "count" not in rule:
        rule["rate"] = 1.0
    return rule


def _cli_number(kind: type[int] | type[float], text: str, name: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"fault {name} must be a number, got {text!r}") from None
