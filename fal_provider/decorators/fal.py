"""``@task.fal``: a TaskFlow function that returns a fal model's arguments.

.. code-block:: python

    from airflow.sdk import task


    @task.fal(app_id="fal-ai/flux/schnell", select="images.0.url", deferrable=True)
    def render(prompt: str) -> dict:
        return {"prompt": prompt, "image_size": "landscape_4_3"}

The function runs on the worker at the start of each try and its return value becomes the
request's ``arguments``; everything else is :class:`~fal_provider.operators.fal.FalInferenceOperator`
(every keyword of the decorator is one of its parameters): the submit, the wait (deferred or not),
reattach on retry (the function runs again on a retry, and the same arguments reattach to the
request already paid for), ``select`` / ``output_path`` and the task's XCom value, which is the
shaped *result*, not the arguments.

Registered with Airflow through the provider info's ``task-decorators`` entry, so
``from airflow.sdk import task`` finds ``task.fal`` without importing this module.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory
from airflow.sdk.definitions.context import context_merge

from fal_provider._compat import determine_kwargs
from fal_provider.exceptions import FalInputError
from fal_provider.operators.fal import FalInferenceOperator
from fal_provider.operators.lineage import recall_inputs, remember_inputs

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator

__all__ = ["FalDecoratedOperator", "fal_task"]


def call_decorated(op: DecoratedOperator, context: Context) -> Any:
    """What the decorated function returns, called as Airflow calls a TaskFlow function (its
    ``op_kwargs`` merged into the context, context values passed where the signature asks)."""
    context_merge(context, op.op_kwargs)
    kwargs = determine_kwargs(op.python_callable, op.op_args, context)
    return op.python_callable(*op.op_args, **kwargs)


class FalDecoratedOperator(DecoratedOperator, FalInferenceOperator):
    """The operator behind ``@task.fal``: calls the function for ``arguments``, then runs the inference.

    The returned dict is used as it is, never rendered as a Jinja template: it is data the
    function computed (often from ``dag_run.conf`` or an upstream result), and rendering it would
    let a prompt run template code.

    :param python_callable: the function that returns the request's arguments (a dict).
    :param op_args: positional arguments for the function (templated).
    :param op_kwargs: keyword arguments for the function (templated).
    """

    template_fields: Sequence[str] = (  # type: ignore[assignment]
        *DecoratedOperator.template_fields,
        *(name for name in FalInferenceOperator.template_fields if name != "arguments"),
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **FalInferenceOperator.template_fields_renderers,
    }
    custom_operator_name = "@task.fal"
    # The arguments exist only once the function ran: show them as the try's rendered fields.
    overwrite_rtif_after_execution = True

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "arguments" in kwargs:
            raise FalInputError(
                "@task.fal takes its arguments from the decorated function's return value; "
                "remove arguments=... from the decorator"
            )
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)

    def execute(self, context: Context) -> Any:
        arguments = call_decorated(self, context)
        if not isinstance(arguments, Mapping):
            raise FalInputError(
                f"The @task.fal function {self.python_callable.__name__!r} must return the request's "
                f"arguments as a dict, got {type(arguments).__name__}"
            )
        self.arguments = dict(arguments)
        if self.deferrable:
            remember_inputs(context, self.arguments)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        # A resumed try does not run the function again: lineage gets the inputs kept before deferring.
        self.lineage_inputs = recall_inputs(context)
        return super().execute_complete(context, event)


def fal_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """Wrap a function that returns fal arguments into a :class:`FalDecoratedOperator`.

    ``multiple_outputs`` is off unless asked for: the function's return annotation (usually
    ``dict``) describes the arguments, not the fal result the task pushes to XCom.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=bool(multiple_outputs),
        decorated_operator_class=FalDecoratedOperator,
        **kwargs,
    )
