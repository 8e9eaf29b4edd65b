"""``@task.fal_batch``: the decorated function returns the batch's inputs; fal runs them.

::

    @task.fal_batch(app_id="fal-ai/flux/schnell", output_path="s3://bucket/batches", max_in_flight=40)
    def prompts(day: str) -> list[dict]:
        return [{"prompt": line} for line in read_prompts(day)]

The function returns what :class:`~fal_provider.operators.batch.FalBatchOperator` takes as
``inputs`` (a list of argument dicts or items, or an ObjectStoragePath of a JSONL file); every
other operator parameter is a decorator argument. The task returns the batch manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory
from airflow.sdk.definitions._internal.types import SET_DURING_EXECUTION

from fal_provider.decorators.fal import call_decorated
from fal_provider.operators.batch import FalBatchOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class _FalBatchDecoratedOperator(DecoratedOperator, FalBatchOperator):
    """Calls the function for the inputs, then runs :class:`FalBatchOperator` over them."""

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *FalBatchOperator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **FalBatchOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.fal_batch"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            inputs=SET_DURING_EXECUTION,
            **kwargs,
        )

    def execute(self, context: Context) -> Any:
        self.inputs = call_decorated(self, context)
        if self.deferrable:
            self.inputs = self.freeze_inputs(context)
        return FalBatchOperator.execute(self, context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """A later round: the inputs the function returned in the first one, never called again."""
        self.inputs = self.frozen_inputs(context)
        return FalBatchOperator.execute_complete(self, context, event)


def fal_batch_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """Wrap a function returning batch inputs into a :class:`FalBatchOperator` task."""
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=_FalBatchDecoratedOperator,
        **kwargs,
    )
