"""The fake hooks are only as good as their spec: these prove a call FalHook would refuse fails."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import pytest

from fal_provider.operators.fal import FalSubmitOperator
from fal_provider.triggers.fal import FalRequestTrigger
from tests.unit.operators.fakes import APP, checked_fake, install_hook, make_hook, make_ref
from tests.unit.triggers.helpers import async_hook


def test_the_autospec_refuses_a_method_falhook_does_not_have() -> None:
    with pytest.raises(AttributeError):
        make_hook().submit_and_wait(APP, {})


def test_the_autospec_refuses_a_keyword_falhook_does_not_take() -> None:
    hook = make_hook()
    hook.submit(APP, {"prompt": "x"}, path="/sub")  # what the real hook takes
    with pytest.raises(TypeError):
        hook.submit(APP, {"prompt": "x"}, route="/sub")


async def test_the_async_autospec_checks_signatures_too() -> None:
    hook = async_hook()
    hook.acancel.return_value = "CANCELLATION_REQUESTED"
    assert await hook.acancel(make_ref()) == "CANCELLATION_REQUESTED"
    with pytest.raises(TypeError):
        await hook.acancel(make_ref(), force=True)


class _Stream:
    def astream(self, app_id: str, arguments: dict[str, Any], **kwargs: Any) -> list[Any]:
        return []


class _Invented:
    def astream_everything(self, app_id: str) -> None:
        return None


def test_a_hand_written_fake_is_bound_against_the_real_signature() -> None:
    fake = checked_fake(_Stream())
    assert fake.astream(APP, {"n": 1}, path="/x") == []
    with pytest.raises(TypeError):
        fake.astream(APP, {"n": 1}, not_a_hook_keyword=True)  # the fake's **kwargs would take it


def test_a_hand_written_fake_with_a_method_falhook_lacks_is_refused() -> None:
    with pytest.raises(AssertionError, match="astream_everything"):
        checked_fake(_Invented())


def test_install_hook_refuses_an_unspecced_mock() -> None:
    op = FalSubmitOperator(task_id="s", app_id=APP, arguments={})
    with pytest.raises(AssertionError, match="specced from FalHook"):
        install_hook(op, MagicMock(name="FalHook"))


def test_install_hook_reaches_operators_and_triggers() -> None:
    hook = make_hook()
    op = install_hook(FalSubmitOperator(task_id="s", app_id=APP, arguments={}), hook)
    trigger = install_hook(FalRequestTrigger(request=make_ref().to_xcom()), hook)
    assert op.hook is hook
    assert trigger._hook() is hook
