"""Find the request a dead try paid for but never heard about.

The inference operator records an intent (inputs' digest, time) just before the submit POST and the
request id right after it (:class:`~fal_provider.operators.lifecycle.RequestStore`). A worker that
dies in between leaves an intent with no request id: fal may have queued the request, and
submitting again would pay twice. fal's submit takes no idempotency key, so only fal knows; its
request history (``GET /v1/models/requests/by-endpoint?expand=payloads``) lists the requests of an
endpoint with their JSON input. A request whose input digest equals the intent's, started in the
window around the intent, is the one: the retry adopts it and waits for it as on any reattach.

When the history cannot answer (the hook has no Platform API, the call fails, or fal stored no
payloads because the request was sent with ``store_io=False``), ``on_orphan`` decides:

* ``"resubmit"`` (the default): submit again, with a warning that this may pay a second time. The
  window is the few milliseconds between the POST's answer and one state-store write, so a
  second payment is rare and bounded to one request, while a task that cannot finish without a
  human is the worse outcome for a scheduled pipeline.
* ``"fail"``: fail the task permanently (:class:`~fal_provider.exceptions.FalOrphanedRequestError`)
  so nobody pays twice; a human checks fal's dashboard and clears the task.

A history that answers with payloads but holds no match means fal never accepted the POST (the
worker died before sending it, or fal refused it), so submitting is safe and needs no policy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from fal_provider.exceptions import FalInputError, FalOrphanedRequestError
from fal_provider.models import FalRequestRef, input_digest

log = logging.getLogger(__name__)

ON_ORPHAN_CHOICES = ("resubmit", "fail")
#: Seconds before the intent a matching request may seem to start (clocks of worker and fal differ).
CLOCK_SKEW = 120.0


class HistoryUnavailable(Exception):
    """fal's request history cannot say whether the lost submit reached fal (the text says why)."""


def check_on_orphan(value: Any) -> str:
    if value not in ON_ORPHAN_CHOICES:
        raise FalInputError(
            f"on_orphan must be one of {', '.join(map(repr, ON_ORPHAN_CHOICES))}, got {value!r}"
        )
    return str(value)


def endpoint_id(app_id: str, path: str = "") -> str:
    """fal's endpoint id of a submit: the app id, plus the sub-path when one was used."""
    tail = (path or "").strip("/")
    return f"{app_id.strip('/')}/{tail}" if tail else app_id.strip("/")


def _seconds(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _input_of(entry: Any) -> Mapping[str, Any] | None:
    value = entry.get("input") if isinstance(entry, Mapping) else getattr(entry, "input", None)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, Mapping) else None


def _field(entry: Any, name: str) -> Any:
    return entry.get(name) if isinstance(entry, Mapping) else getattr(entry, name, None)


def _history(hook: Any, endpoint: str, since: float) -> list[Any]:
    lookup = getattr(hook, "get_request_history", None)
    if lookup is None:
        raise HistoryUnavailable("this hook has no fal request history (Platform API)")
    start = datetime.fromtimestamp(since - CLOCK_SKEW, tz=timezone.utc)
    end = datetime.fromtimestamp(time.time() + CLOCK_SKEW, tz=timezone.utc)
    try:
        return list(lookup(endpoint, start, end, with_payloads=True))
    except Exception as err:
        raise HistoryUnavailable(f"fal's request history failed: {type(err).__name__}: {err}") from None


def find_orphan(hook: Any, app_id: str, path: str, intent_at: float, input_sha: str) -> str | None:
    """The request id fal gave the lost submit, or ``None`` when fal has no such request.

    Raises :class:`HistoryUnavailable` when the history cannot tell.
    """
    entries = _history(hook, endpoint_id(app_id, path), intent_at)
    with_input = [(entry, body) for entry in entries if (body := _input_of(entry)) is not None]
    if entries and not with_input:
        raise HistoryUnavailable(
            "fal stored no payloads for this endpoint's recent requests (sent with store_io=False "
            "or X-Fal-Store-IO: 0?), so the lost request cannot be recognised by its input"
        )
    matches = []
    for entry, body in with_input:
        started = _seconds(_field(entry, "started_at"))
        if input_digest(body) == input_sha and (started is None or started >= intent_at - CLOCK_SKEW):
            matches.append((abs((started or intent_at) - intent_at), str(_field(entry, "request_id"))))
    if not matches:
        return None
    matches.sort()
    if len(matches) > 1:
        log.warning(
            "%d fal requests with the same input started near the lost submit; adopting the closest, %s",
            len(matches),
            matches[0][1],
        )
    return matches[0][1]


def recover(
    hook: Any, app_id: str, path: str, intent_at: float, input_sha: str, on_orphan: str
) -> FalRequestRef | None:
    """The adopted request, or ``None`` to submit again (see the module docstring for when)."""
    when = datetime.fromtimestamp(intent_at, tz=timezone.utc).isoformat(timespec="seconds")
    try:
        request_id = find_orphan(hook, app_id, path, intent_at, input_sha)
    except HistoryUnavailable as why:
        if on_orphan == "fail":
            raise FalOrphanedRequestError(
                f"An earlier try submitted to {app_id} at {when} and died before saving fal's answer; "
                f"{why}. on_orphan='fail': not submitting again. Check fal's dashboard for the request, "
                "then clear the task (or use on_orphan='resubmit')."
            ) from None
        log.warning(
            "An earlier try submitted to %s at %s and died before saving fal's answer; %s. "
            "on_orphan='resubmit': submitting again, which may pay for this input twice.",
            app_id,
            when,
            why,
        )
        return None
    if request_id is None:
        log.info(
            "An earlier try was about to submit to %s at %s; fal's request history has no request "
            "with these inputs since, so it never reached fal: submitting",
            app_id,
            when,
        )
        return None
    log.info(
        "Adopting fal request %s: an earlier try submitted it at %s and died before saving its id "
        "(found in fal's request history by its input)",
        request_id,
        when,
    )
    return hook.request_ref(app_id, request_id)
