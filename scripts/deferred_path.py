"""Which provider modules one deferred FalInferenceOperator runs, from ``execute`` to the end of
``execute_complete`` (the trigger's ``run()`` included): the figure CONTRIBUTING.md keeps at ten.

    python scripts/deferred_path.py

It runs a one-task DAG with ``airflow dags test`` against the embedded emulator (the request stays
in progress for 3 s, so the task really defers and ``dags test`` runs the trigger in its process).
A ``sitecustomize`` profile hook in that process records every ``fal_provider`` module (the
emulator aside) whose functions run while the task is between the two calls. The task has no
``outlets``, no cache and only text inputs, and nothing fails, so ``exceptions.py`` does not run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.harness import AirflowEnv  # noqa: E402

DAG_ID = "fal_deferred_path"

PROFILE_HOOK = """
import atexit, os, sys, threading

_out = os.environ["FAL_PATH_PROFILE_OUT"]
_on = [False]
_modules = set()


def _profile(frame, event, arg):
    code = frame.f_code
    filename = code.co_filename
    if "/fal_provider/" not in filename or "/emulator/" in filename:
        return
    module = filename.split("/fal_provider/", 1)[1]
    if event == "call":
        if module == "operators/fal.py" and code.co_qualname == "FalInferenceOperator.execute":
            _on[0] = True
        if _on[0]:
            _modules.add(module)
    elif event == "return" and code.co_qualname == "FalInferenceOperator.execute_complete":
        _on[0] = False


sys.setprofile(_profile)
threading.setprofile(_profile)
atexit.register(lambda: open(_out, "w").write("\\n".join(sorted(_modules))))
"""

DAG = f'''
from airflow.sdk import DAG
from fal_provider.operators.fal import FalInferenceOperator

with DAG("{DAG_ID}", schedule=None, catchup=False):
    FalInferenceOperator(
        task_id="infer",
        app_id="emulator/echo",
        arguments={{"prompt": "a lighthouse at dusk", "duration_s": 3}},
        deferrable=True,
    )
'''


def modules_on_deferred_path() -> list[str]:
    """The modules, relative to ``fal_provider/``; raises when the task did not defer and succeed."""
    from fal_provider.emulator.testing import run_emulator

    with tempfile.TemporaryDirectory(prefix="fal-deferred-path-") as tmp:
        work = Path(tmp)
        (work / "hook").mkdir()
        (work / "hook" / "sitecustomize.py").write_text(PROFILE_HOOK)
        (work / "dags").mkdir()
        (work / "dags" / "deferred_path.py").write_text(DAG)
        out = work / "modules.txt"
        with run_emulator() as emulator:
            env = AirflowEnv(
                dags_folder=work / "dags",
                env={
                    "AIRFLOW_CONN_FAL_DEFAULT": emulator.connection_json(),
                    "PYTHONPATH": f"{work / 'hook'}:{REPO_ROOT}",
                    "FAL_PATH_PROFILE_OUT": str(out),
                },
            )
            try:
                env.migrate()
                env.dags_test(DAG_ID, timeout=300)
                states = env.task_states(DAG_ID, env.latest_run_id(DAG_ID))
            finally:
                env.cleanup()
        if states.get(("infer", -1)) != "success":
            raise RuntimeError(f"the task did not succeed: {states}")
        modules = out.read_text().split()
        if "triggers/fal.py" not in modules:
            raise RuntimeError("the task did not defer (no trigger code ran)")
        return modules


def main() -> int:
    modules = modules_on_deferred_path()
    print(f"{len(modules)} modules run by one deferred FalInferenceOperator:")
    for module in modules:
        print(f"  fal_provider/{module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
