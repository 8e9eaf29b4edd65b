"""Apache Airflow provider for fal.ai.

Everything Airflow needs to discover the provider is in :func:`get_provider_info`; it is declarative
so the API server can render the connection form without importing the hook. It is the one source
of the form: ``FalHook.get_ui_field_behaviour`` derives its answer from it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_URL_FIELD = {"type": ["string", "null"], "format": "url"}


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ``ProvidersManager`` through the entry point."""
    return {
        "package-name": "airflow-provider-fal",
        "name": "fal.ai",
        "description": "Run fal.ai models from Airflow: queue, subscribe, webhooks, streaming and realtime.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "fal.ai", "external-doc-url": "https://fal.ai/docs", "tags": ["ai"]}
        ],
        "hooks": [{"integration-name": "fal.ai", "python-modules": ["fal_provider.hooks.fal"]}],
        "operators": [{"integration-name": "fal.ai", "python-modules": ["fal_provider.operators.fal"]}],
        "sensors": [{"integration-name": "fal.ai", "python-modules": ["fal_provider.sensors.fal"]}],
        "triggers": [
            {
                "integration-name": "fal.ai",
                "python-modules": ["fal_provider.triggers.fal", "fal_provider.triggers.webhook_events"],
            }
        ],
        "extra-links": ["fal_provider.operators.lifecycle.FalRequestLink"],
        "connection-types": [
            {
                "connection-type": "fal",
                "hook-class-name": "fal_provider.hooks.fal.FalHook",
                "hook-name": "fal.ai",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port"],
                    "relabeling": {"password": "API Key", "host": "Queue base URL"},
                    "placeholders": {
                        "password": "key_id:key_secret",
                        "host": "https://queue.fal.run (leave empty for fal.ai)",
                    },
                },
                "conn-fields": {
                    "run_url": {
                        "label": "Run base URL",
                        "description": "Synchronous run, /stream and realtime host. Default https://fal.run",
                        "schema": _URL_FIELD,
                    },
                    "rest_url": {
                        "label": "REST base URL",
                        "description": "Realtime tokens and storage uploads. Default https://rest.fal.ai",
                        "schema": _URL_FIELD,
                    },
                    "cdn_url": {
                        "label": "CDN base URL",
                        "description": "File uploads. Default https://v3.fal.media",
                        "schema": _URL_FIELD,
                    },
                    "jwks_url": {
                        "label": "Webhook JWKS URL",
                        "description": "Public keys that verify fal's webhook signatures.",
                        "schema": _URL_FIELD,
                    },
                    "webhook_base_url": {
                        "label": "Webhook receiver public base URL",
                        "description": "Public URL of the Airflow API server, e.g. https://airflow.example.com",
                        "schema": _URL_FIELD,
                    },
                    "webhook_allowed_user_ids": {
                        "label": "Webhook allowed fal user ids",
                        "description": (
                            "Comma-separated (or JSON list) fal user ids whose callbacks the receiver "
                            "accepts; fal signs every account's callbacks with the same keys."
                        ),
                        "schema": {"type": ["string", "array", "null"]},
                    },
                    "webhook_secret": {
                        "label": "Webhook channel secret",
                        "description": (
                            "Random string (16+ characters) that keys the token in channel callback "
                            "URLs; the same on workers and API servers."
                        ),
                        "schema": {"type": ["string", "null"], "format": "password", "minLength": 16},
                    },
                    "headers": {
                        "label": "Default headers (JSON object)",
                        "description": "Extra headers sent with every fal request.",
                        "schema": {"type": ["object", "string", "null"]},
                    },
                    "retry_limit": {
                        "label": "HTTP retry attempts",
                        "description": "Attempts per call for retryable failures (default 5).",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                    "retry_min_wait": {
                        "label": "First backoff (seconds)",
                        "description": "Wait before the first retry, doubled each attempt (default 0.5).",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                    "retry_max_wait": {
                        "label": "Maximum backoff (seconds)",
                        "description": "Cap on the wait between attempts (default 30).",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                    "timeout": {
                        "label": "HTTP timeout (seconds)",
                        "description": "Per-call read timeout for queue calls (default 120).",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                },
            }
        ],
    }
