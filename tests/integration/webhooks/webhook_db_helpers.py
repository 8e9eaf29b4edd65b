"""Helpers for the receiver tests: a real metadata database (SQLite, migrated in the suite's temporary
into it, and the receiver served over real HTTP by uvicorn on 127.0.0.1.

Callbacks are signed with the emulator's key and verified against the emulator's JWKS endpoint, as
they would be in a deployment where the emulator stands in for fal.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fal_provider.webhooks.receiver import create_app
from fal_provider.webhooks.settings import ReceiverSettings
from fal_provider.webhooks.urls import WebhookSecret

WAIT_DAG_ID = "fal_webhook_it_wait"
ASSET_DAG_ID = "fal_webhook_it_asset"
CHANNEL = "it-batch"
FAL_TRIGGER = "fal_provider.triggers.fal.FalRequestTrigger"

DAG_SOURCE = f"""
from __future__ import annotations

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset, AssetWatcher

from fal_provider.webhooks.triggers import FalWebhookEventTrigger

with DAG("{WAIT_DAG_ID}", schedule=None):
    EmptyOperator(task_id="wait")
    EmptyOperator(task_id="other")

done = Asset("fal_webhook_it_done", watchers=[
    AssetWatcher(name="fal_it", trigger=FalWebhookEventTrigger(channel="{CHANNEL}"))
])
with DAG("{ASSET_DAG_ID}", schedule=[done]):
    EmptyOperator(task_id="consume")
"""


@pytest.fixture(scope="session")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate the suite's temporary metadata DB and sync the test DAGs (unpaused) into it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    try:
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    except ImportError:  # Airflow < 3.2 keeps the DagBag in airflow.models
        from airflow.models.dagbag import DagBag, sync_bag_to_db  # type: ignore[no-redef]
    from airflow.models.dag import DagModel
    from airflow.utils.db import initdb
    from airflow.utils.session import create_session
    from sqlalchemy import select

    folder = tmp_path_factory.mktemp("webhook_dags")
    (folder / "fal_webhook_it_dags.py").write_text(textwrap.dedent(DAG_SOURCE))
    initdb()
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, bundle_name="dags-folder", bundle_version=None)
    with create_session() as session:
        for dag in session.scalars(select(DagModel).where(DagModel.dag_id.in_([WAIT_DAG_ID, ASSET_DAG_ID]))):
            dag.is_paused = False
    # Asset watchers are registered only for unpaused DAGs: sync again now that they are.
    sync_bag_to_db(bag, bundle_name="dags-folder", bundle_version=None)
    return folder


@dataclass
class DeferredTask:
    run_id: str
    task_id: str
    trigger_id: int
    request_id: str

    @property
    def query(self) -> dict[str, str]:
        return {"dag_id": WAIT_DAG_ID, "run_id": self.run_id, "task_id": self.task_id}


def make_run(deferred_on: dict[str, str | None]) -> dict[str, DeferredTask | None]:
    """A fresh DAG run; each task in ``deferred_on`` is DEFERRED on a fal trigger for that request id
    (``None``: the task has not deferred yet)."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.trigger import Trigger
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    run_id = f"it-{uuid.uuid4().hex[:10]}"
    made: dict[str, DeferredTask | None] = {}
    with create_session() as session:
        dag = SerializedDagModel.get_dag(WAIT_DAG_ID, session=session)
        assert dag is not None
        now = timezone.utcnow()
        run = dag.create_dagrun(
            run_id=run_id,
            run_after=now,
            logical_date=now,
            data_interval=(now, now),
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            state=DagRunState.RUNNING,
            session=session,
        )
        for task_id, request_id in deferred_on.items():
            if request_id is None:
                made[task_id] = None
                continue
            ti = run.get_task_instance(task_id, session=session)
            assert ti is not None
            trigger = Trigger(
                FAL_TRIGGER,
                {"request": {"request_id": request_id, "app_id": "fal-ai/fast-sdxl"}, "wait_mode": "webhook"},
            )
            session.add(trigger)
            session.flush()
            ti.state = TaskInstanceState.DEFERRED
            ti.trigger_id = trigger.id
            ti.next_method = "execute_complete"
            ti.next_kwargs = {}
            made[task_id] = DeferredTask(run_id, task_id, trigger.id, request_id)
    return made


def task_state(run_id: str, task_id: str) -> tuple[str | None, Any, int | None]:
    """(state, decoded next_kwargs, trigger_id) of one task instance."""
    from airflow.models.taskinstance import TaskInstance

    try:
        from airflow.sdk.serde import deserialize
    except ImportError:  # Airflow < 3.2: the ExtendedJSON column already decoded next_kwargs

        def deserialize(value: Any) -> Any:
            return value

    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == WAIT_DAG_ID,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
            )
        )
        assert ti is not None
        kwargs = deserialize(ti.next_kwargs) if ti.next_kwargs else None
        return (str(ti.state) if ti.state else None, kwargs, ti.trigger_id)


def count_records(request_id: str | None = None) -> int:
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    from fal_provider.webhooks.store import KEY_PREFIX, record_key

    with create_session() as session:
        query = select(func.count(Variable.id))
        if request_id is None:
            query = query.where(Variable.key.startswith(KEY_PREFIX, autoescape=True))
        else:
            query = query.where(Variable.key == record_key(request_id))
        return int(session.scalar(query) or 0)


class ServedApp:
    """uvicorn in a daemon thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"receiver-{self.port}")
        self.receiver: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fal/webhook"

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def serve_receiver(settings: ReceiverSettings) -> ServedApp:
    """Mounted under ``/fal`` on a parent app, the way the API server mounts plugin apps."""
    from fastapi import FastAPI

    parent = FastAPI()
    app = create_app(settings)
    parent.mount("/fal", app)
    served = ServedApp(parent)
    served.receiver = app.state.receiver
    return served


def emulator_settings(fal_emulator: Any, **overrides: Any) -> ReceiverSettings:
    """The receiver configured as the emulator's connection helper configures it: its JWKS, its
    user id on the allow-list and its channel secret (``overrides`` replace any of them)."""
    values: dict[str, Any] = {
        "jwks_url": fal_emulator.jwks_url,
        "max_body_bytes": 64 * 1024,
        "allowed_user_ids": frozenset({fal_emulator.user_id}),
        "webhook_secret": WebhookSecret(fal_emulator.webhook_secret),
    }
    values.update(overrides)
    return ReceiverSettings(**values)


def channel_query(fal_emulator: Any, channel: str) -> dict[str, str]:
    """``channel`` and its token, as ``build_webhook_url`` puts them in a channel URL."""
    return {"channel": channel, "token": WebhookSecret(fal_emulator.webhook_secret).token(channel)}


@pytest.fixture
def receiver(airflow_db: Path, fal_emulator: Any) -> Iterator[ServedApp]:
    with serve_receiver(emulator_settings(fal_emulator)) as served:
        yield served


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as http:
        yield http
