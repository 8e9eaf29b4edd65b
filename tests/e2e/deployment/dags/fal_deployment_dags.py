"""DAGs the multi-process deployment tests run (not examples: each exercises one scenario).

Every submit carries ``marker = "<run_id>/<task_id>"`` in its arguments so the tests can count, in
the emulator, exactly how many fal requests each task instance paid for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG

from fal_provider.operators.fal import FalInferenceOperator

MARKER = "{{ run_id }}/{{ ti.task_id }}"
START = datetime(2025, 1, 1)


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False, default_args={"retries": 0})


def _infer(task_id: str, app_id: str, arguments: dict[str, Any], **kwargs: Any) -> FalInferenceOperator:
    kwargs.setdefault("deferrable", True)
    return FalInferenceOperator(
        task_id=task_id, app_id=app_id, arguments={**arguments, "marker": MARKER}, **kwargs
    )


# 1 + 2: resumed by the callback; forged callbacks meanwhile change nothing. The backstop is 300 s,
# so finishing in seconds is only possible through the receiver.
with _dag("fal_dep_webhook"):
    _infer("infer", "emulator/echo", {"duration_s": 20}, wait_mode="webhook", backstop_interval=300)

# 3: the emulator drops this app's callbacks; the 4 s backstop finds the result.
with _dag("fal_dep_dropped"):
    _infer("infer", "fal-ai/flux/schnell", {"prompt": "dropped"}, wait_mode="webhook", backstop_interval=4)

# 4: the emulator delivers this app's callbacks twice.
with _dag("fal_dep_duplicated"):
    _infer("infer", "fal-ai/flux/dev", {"prompt": "twice"}, wait_mode="webhook", backstop_interval=300)

# 5: three waiting modes deferred together while the triggerer is SIGKILLed and restarted.
with _dag("fal_dep_restart"):
    _infer(
        "poll", "emulator/echo", {"duration_s": 25}, wait_mode="poll", poll_interval=1, max_poll_interval=2
    )
    _infer("stream", "emulator/echo", {"duration_s": 25}, wait_mode="stream", poll_interval=1)
    _infer("webhook", "emulator/echo", {"duration_s": 25}, wait_mode="webhook", backstop_interval=300)

# 6: marked failed while deferred; the trigger's on_kill cancels the fal request.
with _dag("fal_dep_cancel"):
    _infer("infer", "emulator/echo", {"duration_s": 600}, wait_mode="webhook", backstop_interval=300)

# High availability: one task per waiting mode, waiting while one of two triggerers and one of two
# api-servers are SIGKILLed. The test keeps the requests queued in the emulator until the failover is
# done, so they run (for HA_DURATION_S) only afterwards; the 300 s backstop means the webhook task can
# finish in time only through the callback the surviving api-server receives.
HA_DURATION_S = 2
with _dag("fal_dep_ha"):
    _infer(
        "poll", "emulator/echo", {"duration_s": HA_DURATION_S}, wait_mode="poll", poll_interval=1,
        max_poll_interval=2,
    )  # fmt: skip
    _infer("stream", "emulator/echo", {"duration_s": HA_DURATION_S}, wait_mode="stream", poll_interval=1)
    _infer(
        "webhook", "emulator/echo", {"duration_s": HA_DURATION_S}, wait_mode="webhook", backstop_interval=300
    )
