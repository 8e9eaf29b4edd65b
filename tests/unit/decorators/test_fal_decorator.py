"""``@task.fal``: found through the provider info, the function's dict becomes the arguments, and
the task is a FalInferenceOperator in every other respect."""

from __future__ import annotations

from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG, task

from fal_provider.decorators.fal import FalDecoratedOperator, fal_task
from fal_provider.exceptions import FalInputError
from fal_provider.operators.fal import FalInferenceOperator
from fal_provider.operators.lineage import INPUT_URLS_XCOM_KEY
from tests.unit.operators.fakes import APP, done, install_hook, make_context, make_hook, pushed, queued

START = pendulum.datetime(2026, 1, 1)


def build(fn: Any, *args: Any, **kwargs: Any) -> FalDecoratedOperator:
    with DAG("taskflow_unit", schedule=None, start_date=START):
        out = fn(*args, **kwargs)
    op = out.operator
    assert isinstance(op, FalDecoratedOperator)
    return op


def test_task_fal_is_registered_through_the_provider_info() -> None:
    try:
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime as Manager
    except ImportError:  # Airflow < 3.2: the core ProvidersManager resolves them
        from airflow.providers_manager import ProvidersManager as Manager  # type: ignore[no-redef]

    assert Manager().taskflow_decorators["fal"] is fal_task
    assert task.fal is fal_task


def test_the_return_value_is_the_request_arguments_and_the_result_is_the_xcom() -> None:
    @task.fal(app_id=APP, select="images.0.url", deferrable=False, poll_interval=0.01)
    def render(prompt: str, seed: int = 1) -> dict[str, Any]:
        return {"prompt": prompt, "seed": seed}

    op = build(render, "a cat", seed=5)
    assert isinstance(op, FalInferenceOperator) and op.multiple_outputs is False
    hook = make_hook([done()], result={"images": [{"url": "http://cdn/a.png"}]})
    install_hook(op, hook)
    assert op.execute(make_context()) == "http://cdn/a.png"
    hook.submit.assert_called_once()
    assert hook.submit.call_args.args[:2] == (APP, {"prompt": "a cat", "seed": 5})


def test_deferrable_and_other_operator_parameters_pass_through() -> None:
    from fal_provider._compat import TaskDeferred

    @task.fal(app_id=APP, deferrable=True, wait_mode="stream", timeout=60)
    def render() -> dict[str, Any]:
        return {"image_url": "https://example.com/in.png"}

    op = build(render)
    assert op.deferrable is True and op.timeout == 60 and op.wait_policy.wait_mode == "stream"
    install_hook(op, make_hook([queued()]))
    context = make_context()
    with pytest.raises(TaskDeferred):
        op.execute(context)
    # the resumed try does not run the function again: its inputs are kept for lineage
    assert pushed(context)[INPUT_URLS_XCOM_KEY] == ["https://example.com/in.png"]


def test_a_function_that_returns_no_dict_fails_before_any_submit() -> None:
    @task.fal(app_id=APP, deferrable=False)
    def render() -> Any:
        return "a cat"

    op = build(render)
    hook = make_hook()
    install_hook(op, hook)
    with pytest.raises(FalInputError, match="must return the request's arguments as a dict"):
        op.execute(make_context())
    hook.submit.assert_not_called()


def test_arguments_in_the_decorator_are_refused_at_parse_time() -> None:
    @task.fal(app_id=APP, arguments={"prompt": "x"})
    def render() -> dict[str, Any]:
        return {}

    with pytest.raises(FalInputError, match="remove arguments="):
        build(render)


def test_a_bad_app_id_is_a_dag_import_error() -> None:
    @task.fal(app_id="../../rest/tokens")
    def render() -> dict[str, Any]:
        return {}

    with pytest.raises(FalInputError):
        build(render)


def test_returned_values_are_not_rendered_as_templates() -> None:
    @task.fal(app_id=APP, deferrable=False)
    def render() -> dict[str, Any]:
        return {"prompt": "{{ 7 * 7 }}"}

    op = build(render)
    hook = make_hook([done()])
    install_hook(op, hook)
    op.execute(make_context())
    assert hook.submit.call_args.args[1] == {"prompt": "{{ 7 * 7 }}"}
