"""The shared record of verified callbacks: one Airflow Variable per fal request.

Only the metadata database is shared between API servers and triggerers, so that is where a
callback is written. A Variable is used because every Airflow component can already read one
(triggers through the Task SDK, ``sync_to_async(Variable.get)``), its key is unique (which makes
the receiver idempotent across API servers without locks: the second insert fails) and its value
is encrypted at rest with the Fernet key. The record is small: the outcome, never a large model
output, which the worker fetches from fal as usual.

Variables carry no timestamp, so ``received_at`` lives in the value and the sweep parses it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

KEY_PREFIX = "fal_webhook/"
DESCRIPTION = "fal webhook record (written by the fal webhook receiver; safe to delete when old)"
#: Model outputs up to this size (JSON bytes) are kept in the record, for event-driven DAGs.
DEFAULT_PAYLOAD_MAX_BYTES = 8 * 1024


def record_key(request_id: str) -> str:
    return f"{KEY_PREFIX}{request_id}"


@dataclass(frozen=True)
class WebhookRecord:
    """What a verified callback said, in a form small enough for a Variable and a trigger event."""

    request_id: str
    status: str
    received_at: float
    user_id: str = ""
    gateway_request_id: str | None = None
    error: str | None = None
    payload_error: str | None = None
    channel: str | None = None
    payload: Any = None
    payload_omitted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        """fal's ``OK`` means the model answered 200; ``payload_error`` only means delivery lost it."""
        return self.status == "OK"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str) -> WebhookRecord:
        data = json.loads(text)
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    @classmethod
    def from_payload(
        cls,
        body: dict[str, Any],
        *,
        user_id: str,
        channel: str | None = None,
        payload_max_bytes: int = DEFAULT_PAYLOAD_MAX_BYTES,
        now: float | None = None,
    ) -> WebhookRecord:
        payload = body.get("payload")
        encoded = len(json.dumps(payload, default=str).encode()) if payload is not None else 0
        keep = payload is not None and encoded <= payload_max_bytes
        return cls(
            request_id=str(body["request_id"]),
            status=str(body["status"]),
            received_at=time.time() if now is None else now,
            user_id=user_id,
            gateway_request_id=_optional_str(body.get("gateway_request_id")),
            error=_optional_str(body.get("error"), 2000),
            payload_error=_optional_str(body.get("payload_error"), 2000),
            channel=channel,
            payload=payload if keep else None,
            payload_omitted=payload is not None and not keep,
        )


def _optional_str(value: Any, limit: int = 250) -> str | None:
    return None if value is None else str(value)[:limit]


def insert_record(record: WebhookRecord, *, session: Session) -> bool:
    """Add the record in this session; False when one already exists for the request.

    The caller commits. A concurrent insert by another API server surfaces as an IntegrityError
    at flush or commit, which the caller treats as a duplicate too.
    """
    from airflow.models.variable import Variable
    from sqlalchemy import select

    key = record_key(record.request_id)
    if session.scalar(select(Variable.id).where(Variable.key == key)) is not None:
        return False
    session.add(Variable(key=key, val=record.to_json(), description=DESCRIPTION))
    session.flush()
    return True


def record_exists(request_id: str, *, session: Session) -> bool:
    from airflow.models.variable import Variable
    from sqlalchemy import select

    return session.scalar(select(Variable.id).where(Variable.key == record_key(request_id))) is not None


def get_record(request_id: str, *, session: Session) -> WebhookRecord | None:
    from airflow.models.variable import Variable
    from sqlalchemy import select

    variable = session.scalar(select(Variable).where(Variable.key == record_key(request_id)))
    return None if variable is None else WebhookRecord.from_json(variable.val)


def delete_expired(retention_seconds: float, *, session: Session, now: float | None = None) -> int:
    """Delete records older than the retention; unreadable ones count as old (they serve nobody)."""
    from airflow.models.variable import Variable
    from sqlalchemy import delete, select

    cutoff = (time.time() if now is None else now) - retention_seconds
    expired: list[int] = []
    rows = session.execute(
        select(Variable.id, Variable).where(Variable.key.startswith(KEY_PREFIX, autoescape=True))
    )
    for variable_id, variable in rows:
        try:
            received_at = float(json.loads(variable.val)["received_at"])
        except (ValueError, KeyError, TypeError):
            received_at = float("-inf")
        if received_at < cutoff:
            expired.append(variable_id)
    if expired:
        session.execute(delete(Variable).where(Variable.id.in_(expired)))
    return len(expired)
