"""``validate_arguments`` on the submitting operators: the schema check runs before the submit,
its FalInputError stops the task with nothing submitted, and it can be turned off."""

from __future__ import annotations

import pytest

from fal_provider.exceptions import FalInputError
from fal_provider.operators.fal import FalInferenceOperator, FalSubmitOperator
from tests.unit.operators.fakes import APP, install_hook, make_context, make_hook


def test_submit_operator_checks_the_rendered_arguments_before_submitting() -> None:
    hook = make_hook()
    order: list[str] = []
    hook.validate_arguments.side_effect = lambda *a, **k: order.append("validate")
    hook.submit.side_effect = lambda *a, **k: order.append("submit") or hook.submit.return_value
    op = install_hook(
        FalSubmitOperator(task_id="s", app_id=APP, arguments={"prompt": "x"}, path="/sub"), hook
    )
    op.execute(make_context())
    assert order == ["validate", "submit"]
    hook.validate_arguments.assert_called_once_with(APP, {"prompt": "x"}, path="/sub")


def test_a_schema_error_fails_the_inference_task_with_nothing_submitted() -> None:
    hook = make_hook()
    hook.validate_arguments.side_effect = FalInputError("missing required field prompt")
    op = install_hook(FalInferenceOperator(task_id="i", app_id=APP, arguments={}, deferrable=False), hook)
    with pytest.raises(FalInputError, match="prompt"):
        op.execute(make_context())
    hook.submit.assert_not_called()


def test_validate_arguments_false_skips_the_check() -> None:
    hook = make_hook()
    op = FalSubmitOperator(task_id="s", app_id=APP, arguments={"prompt": "x"}, validate_arguments=False)
    install_hook(op, hook).execute(make_context())
    hook.validate_arguments.assert_not_called()
    hook.submit.assert_called_once()
