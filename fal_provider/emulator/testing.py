"""Run the emulator inside a test process and point clients (provider, fal_client) at it.

with run_emulator(key="id:secret") as emu:
    with emu.patch_fal_client():
        fal_client.subscribe("emulator/echo", {"x": 1})
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from fal_provider.emulator.config import EmulatorConfig
from fal_provider.emulator.faults import FaultConfig
from fal_provider.emulator.webhooks import DEFAULT_USER_ID

DEFAULT_TEST_KEY = "emulator-key-id:emulator-key-secret"
#: The emulator's ADMIN-scoped Platform API key (billing events): connection extra ``admin_api_key``.
DEFAULT_TEST_ADMIN_KEY = "emulator-admin-id:emulator-admin-secret"
FAL_CLIENT_GLOBALS = ("QUEUE_URL_FORMAT", "RUN_URL_FORMAT", "REALTIME_URL_FORMAT", "REST_URL", "CDN_URL")
_CACHED_CLIENT_ATTRS = ("_auth", "_client", "_token_manager")


class FalEmulator:
    """A running emulator on 127.0.0.1 (free port) served from a background thread."""

    def __init__(
        self,
        key: str | None = DEFAULT_TEST_KEY,
        faults: dict[str, Any] | list[Any] | None = None,
        signing_key_file: str | None = None,
        admin_key: str | None = DEFAULT_TEST_ADMIN_KEY,
        **config: Any,
    ) -> None:
        from fal_provider.emulator.app import create_app
        from fal_provider.emulator.webhooks import load_or_create_signing_key

        signing_key = load_or_create_signing_key(signing_key_file) if signing_key_file else None
        self.key = key
        self.admin_key = admin_key if key is not None else None
        emulator_config = EmulatorConfig(key=key, admin_key=self.admin_key, **config)
        #: The fal user id the emulator signs callbacks with: the connection's allow-list.
        self.user_id = emulator_config.user_id
        #: A fresh channel-token secret per emulator, carried by the connection helpers below.
        self.webhook_secret = secrets.token_urlsafe(32)
        self.app = create_app(emulator_config, FaultConfig.from_json(faults), signing_key)
        self._server: Any = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FalEmulator:
        from fal_provider.emulator.server import BackgroundServer

        self._server = BackgroundServer(self.app)
        self._server.start()
        self._admin = httpx.Client(base_url=self.base_url, timeout=30)
        self._admin.get("/_emulator/health").raise_for_status()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._admin.close()
            self._server.stop()
            self._server = None

    def __enter__(self) -> FalEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- URLs ------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def queue_url(self) -> str:
        return f"{self.base_url}/queue"

    @property
    def run_url(self) -> str:
        return f"{self.base_url}/run"

    @property
    def realtime_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/run"

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}/rest"

    @property
    def cdn_url(self) -> str:
        return f"{self.base_url}/cdn"

    @property
    def platform_url(self) -> str:
        """fal's Platform API (``https://api.fal.ai/v1``): prices, schemas, billing, history."""
        return f"{self.base_url}/platform/v1"

    @property
    def jwks_url(self) -> str:
        return f"{self.rest_url}/.well-known/jwks.json"

    @property
    def request_page_url(self) -> str:
        """The emulator's page for a person, as the connection's ``request_page_url`` pattern."""
        return f"{self.base_url}/_emulator/requests/{{request_id}}/view"

    @property
    def signing_key(self) -> Any:
        """The Ed25519 private key webhooks are signed with (for forging callbacks in tests)."""
        return self.app.state.signing_key

    # -- control ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return dict(self._admin.get("/_emulator/stats").raise_for_status().json())

    def reset(self) -> None:
        self._admin.post("/_emulator/reset").raise_for_status()

    def set_faults(self, faults: dict[str, Any] | list[Any] | None = None, **rule: Any) -> dict[str, Any]:
        """``set_faults(kind="429", count=2, endpoints=["submit"])`` or a full ``{"seed","rules"}``."""
        body = faults if faults is not None else (rule or {"rules": []})
        return dict(self._admin.post("/_emulator/faults", json=body).raise_for_status().json())

    def clear_faults(self) -> None:
        self.set_faults({"rules": []})

    def configure(self, **changes: Any) -> dict[str, Any]:
        return dict(self._admin.post("/_emulator/config", json=changes).raise_for_status().json())

    def billing(self, **tags: str) -> dict[str, Any]:
        """The billed total and billing events (``billing(**{"airflow.dag": "x"})`` filters by tag)."""
        params = {"tag": [f"{name}={value}" for name, value in tags.items()]}
        return dict(self._admin.get("/_emulator/billing", params=params).raise_for_status().json())

    def billed_total(self, **tags: str) -> float:
        return float(self.billing(**tags)["total"])

    def deprecate(self, endpoint_id: str, replacement: str | None = None) -> None:
        body = {"endpoint_id": endpoint_id, "replacement": replacement}
        self._admin.post("/_emulator/deprecations", json=body).raise_for_status()

    def request_info(self, request_id: str) -> dict[str, Any]:
        return dict(self._admin.get(f"/_emulator/requests/{request_id}").raise_for_status().json())

    # -- clients ---------------------------------------------------------------------------------

    def connection_extra(self) -> dict[str, str]:
        return {
            "run_url": self.run_url,
            "rest_url": self.rest_url,
            "cdn_url": self.cdn_url,
            "jwks_url": self.jwks_url,
            "platform_url": self.platform_url,
            **({"admin_api_key": self.admin_key} if self.admin_key else {}),
            "request_page_url": self.request_page_url,
            **emulator_webhook_extra(self.user_id, self.webhook_secret),
        }

    def connection_json(self, conn_id: str | None = None) -> str:
        """Airflow connection JSON (for ``AIRFLOW_CONN_*``) in the provider's layout."""
        data: dict[str, Any] = {
            "conn_type": "fal",
            "host": self.queue_url,
            "password": self.key or "",
            "extra": self.connection_extra(),
        }
        if conn_id:
            data["conn_id"] = conn_id
        return json.dumps(data)

    def connection_uri(self) -> str:
        """Airflow connection URI; the host URL is percent-encoded so Airflow keeps scheme and path."""
        extra = "&".join(f"{name}={quote(value, safe='')}" for name, value in self.connection_extra().items())
        password = quote(self.key or "", safe="")
        return f"fal://:{password}@{quote(self.queue_url, safe='')}/?{extra}"

    def fal_client_env(self) -> dict[str, str]:
        """Environment for fal_client credentials (hosts must be patched in-process, see below)."""
        return {"FAL_KEY": self.key or ""}

    @contextmanager
    def patch_fal_client(self, *, set_key_env: bool = True) -> Iterator[None]:
        """Point an imported ``fal_client`` at this emulator (module globals), restoring them after."""
        import fal_client
        import fal_client.client as fal_module

        values = {
            "QUEUE_URL_FORMAT": f"{self.queue_url}/",
            "RUN_URL_FORMAT": f"{self.run_url}/",
            "REALTIME_URL_FORMAT": f"{self.realtime_url}/",
            "REST_URL": self.rest_url,
            "CDN_URL": self.cdn_url,
        }
        saved = {name: getattr(fal_module, name) for name in FAL_CLIENT_GLOBALS}
        saved_env = os.environ.get("FAL_KEY")
        module_clients = (fal_client.sync_client, fal_client.async_client)
        for name, value in values.items():
            setattr(fal_module, name, value)
        if set_key_env and self.key:
            os.environ["FAL_KEY"] = self.key
        _forget_cached(module_clients)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(fal_module, name, value)
            if set_key_env:
                if saved_env is None:
                    os.environ.pop("FAL_KEY", None)
                else:
                    os.environ["FAL_KEY"] = saved_env
            _forget_cached(module_clients)


def emulator_webhook_extra(user_id: str = DEFAULT_USER_ID, secret: str | None = None) -> dict[str, str]:
    """The receiver's connection extras for an emulator: its user id allow-listed, a channel secret.

    For connections built by hand around an emulator process (the deployment tests); ``secret``
    defaults to a fresh random one.
    """
    return {
        "webhook_allowed_user_ids": user_id,
        "webhook_secret": secret if secret is not None else secrets.token_urlsafe(32),
    }


def _forget_cached(clients: tuple[Any, ...]) -> None:
    """fal_client caches credentials per client object; drop them so the new key is used."""
    for client in clients:
        for attr in _CACHED_CLIENT_ATTRS:
            client.__dict__.pop(attr, None)


@contextmanager
def run_emulator(key: str | None = DEFAULT_TEST_KEY, **config: Any) -> Iterator[FalEmulator]:
    """Start an emulator for the duration of the block."""
    emulator = FalEmulator(key=key, **config)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


# --------------------------------------------------------------------------- dag.test() in tests


def prepare_dag_test(dag: Any) -> Any:
    """Make ``dag.test()`` work on a DAG object from any module, as it did before Airflow 3.

    Airflow 3's ``dag.test()`` needs the metadata database's tables and runs the DAG as
    serialized from a DAG bundle, so a DAG defined in a test module, or in a file outside the
    configured ``dags_folder``, fails with ``no such table`` and then "the dag is not serialized".
    This creates or upgrades the tables of the configured metadata database (point
    ``AIRFLOW_HOME`` or ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` at a test database: nothing is
    deleted, but a real one would be migrated) and stores ``dag`` as the ``dags-folder`` bundle
    would. Returns ``dag``, so ``prepare_dag_test(dag).test()`` reads naturally.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils import db
    from airflow.utils.session import create_session

    _ensure_metadata_db(db)
    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    bundle = next(iter(manager.get_all_dag_bundles())).name
    with create_session() as session:
        update_dag_parsing_results_in_db(
            bundle, None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session
        )
    return dag


_DB_READY: set[str] = set()


def _ensure_metadata_db(db: Any) -> None:
    """``airflow db migrate`` once per process and database URL (a no-op on an up-to-date one)."""
    from airflow import settings

    url = str(getattr(settings, "SQL_ALCHEMY_CONN", ""))
    if url not in _DB_READY:
        db.initdb()
        _DB_READY.add(url)
