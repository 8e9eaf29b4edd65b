"""Registers the provider's API-server extensions on every Airflow API server (entry point
``airflow.plugins``): the webhook receiver and the "fal" tab of the task-instance page.

Every API-server process mounts both apps, so fal may call any replica behind the load balancer
and a person's browser may load the tab from any of them; neither keeps state another replica
would need.

The tab is an ``external_views`` entry, not a ``react_apps`` bundle: the page is server-rendered
HTML from the view's own FastAPI app (``fal_provider.view``), so there is no JavaScript build to
ship or keep in step with the UI's React version, the same page opens on its own in a browser tab,
and it works on every Airflow the provider supports (3.1+). The UI shows it in an iframe on the API
server's origin and fills ``{DAG_ID}``, ``{RUN_ID}``, ``{TASK_ID}`` and ``{MAP_INDEX}``; the
``href`` is relative so it resolves under the UI's ``<base href>`` (an Airflow served under a path).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from fal_provider.view.app import URL_PREFIX as VIEW_PREFIX
from fal_provider.view.app import create_app as create_view_app
from fal_provider.webhooks.receiver import create_app
from fal_provider.webhooks.urls import URL_PREFIX

VIEW_HREF = VIEW_PREFIX.lstrip("/") + "/dags/{DAG_ID}/runs/{RUN_ID}/tasks/{TASK_ID}?map_index={MAP_INDEX}"


class FalWebhookPlugin(AirflowPlugin):
    name = "fal_webhooks"
    fastapi_apps = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "fal webhook receiver"},
        {"app": create_view_app(), "url_prefix": VIEW_PREFIX, "name": "fal task view"},
    ]
    external_views = [
        {"name": "fal", "href": VIEW_HREF, "destination": "task_instance", "url_route": "fal"},
    ]
