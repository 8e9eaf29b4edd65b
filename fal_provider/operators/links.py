"""The "fal request" extra link.

Airflow 3 materialises extra links on the worker when a try ends, including a try that ends in
DEFERRED, so the operators and the sensor push the URL (and the request reference) before deferring
(:func:`publish_request`) and the link shows while they wait.

Where it points, first match wins (``{request_id}`` and ``{app_id}`` are filled in):

* the connection's ``request_page_url`` extra: a page the connection's server shows a person (the
  emulator's connection helpers set it to the emulator's own request page);
* on fal's hosts, fal's dashboard. fal documents no per-request dashboard URL, so the default opens
  the dashboard's request list filtered by the id (``?requestId=``, degrading to the plain list if
  fal ignores it); ``[fal] dashboard_request_url`` (``AIRFLOW__FAL__DASHBOARD_REQUEST_URL``) changes it;
* elsewhere (a proxy), the request's status URL.

The ``fal_request`` XCom also names the connection (``conn_id``), so the task view on the API server
can ask that connection's fal for live status; reading it back as a reference ignores the extra key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

from airflow.sdk import BaseOperatorLink

from fal_provider.models import FalRequestRef

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

#: XCom key of the request reference pushed before waiting (handy for other tasks and debugging).
REQUEST_XCOM_KEY = "fal_request"
LINK_XCOM_KEY = "fal_request_url"
DEFAULT_DASHBOARD_URL = "https://fal.ai/dashboard/requests?requestId={request_id}"
_FAL_HOSTS = ("fal.run", "fal.ai", "falrun.com")


def _is_fal_host(url: str | None) -> bool:
    host = (urlparse(url or "").hostname or "").lower()
    return any(host == name or host.endswith("." + name) for name in _FAL_HOSTS)


def request_url(ref: FalRequestRef, queue_url: str | None, page_url: str | None = None) -> str:
    """The page to open for a request: the connection's request page, fal's dashboard, or the status URL."""
    if page_url:
        return page_url.format(request_id=quote(ref.request_id, safe=""), app_id=ref.app_id)
    if _is_fal_host(queue_url) or (queue_url is None and _is_fal_host(ref.status_url)):
        from fal_provider._compat import conf

        pattern = conf.get("fal", "dashboard_request_url", fallback=DEFAULT_DASHBOARD_URL)
        return pattern.format(request_id=ref.request_id, app_id=ref.app_id)
    return ref.status_url or ""


def publish_request(context: Context, hook: Any, ref: FalRequestRef, log: Any) -> None:
    """Push the reference and the link before any waiting, so both show while the task is deferred."""
    ti = context["ti"]
    conn_id = getattr(hook, "fal_conn_id", None)
    ti.xcom_push(
        key=REQUEST_XCOM_KEY,
        value={**ref.to_xcom(), **({"conn_id": conn_id} if isinstance(conn_id, str) else {})},
    )
    try:
        queue_url, page_url = hook.settings.queue_url, getattr(hook.settings, "request_page_url", None)
    except Exception:  # a link is a convenience: never fail the task over it
        queue_url, page_url = None, None
    url = request_url(ref, queue_url, page_url if isinstance(page_url, str) else None)
    ti.xcom_push(key=LINK_XCOM_KEY, value=url)
    log.info("fal request %s on %s: %s", ref.request_id, ref.app_id, url)


class FalRequestLink(BaseOperatorLink):
    """Link from the task to the fal request it submitted or waits for."""

    name = "fal request"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(key=LINK_XCOM_KEY, ti_key=ti_key)
        return str(value) if value else ""
