"""Registers the webhook receiver on every Airflow API server (entry point ``airflow.plugins``).

Every API-server process mounts the app, so fal may call any replica behind the load balancer;
the receiver keeps no state of its own that another replica would need.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from fal_provider.webhooks.receiver import create_app
from fal_provider.webhooks.urls import URL_PREFIX


class FalWebhookPlugin(AirflowPlugin):
    name = "fal_webhooks"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "fal webhook receiver"}]
