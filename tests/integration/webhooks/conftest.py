"""Fixtures for the receiver tests; the helpers live in ``webhook_db_helpers`` so tests can import them."""

from __future__ import annotations

from tests.integration.webhooks.webhook_db_helpers import airflow_db, client, receiver

__all__ = ["airflow_db", "client", "receiver"]
