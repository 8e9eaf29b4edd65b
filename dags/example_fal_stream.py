"""Streaming an LLM answer into the task log, then using it downstream.

``FalStreamOperator`` calls the app's ``/stream`` endpoint (Server-Sent Events): the partial
answers show in the task log as they arrive (at most one line per ``log_interval`` seconds), and
the task returns the final event, the last one before fal closes the stream. ``select="output"``
keeps only the answer text in XCom.

The same streaming is available from TaskFlow code through ``FalHook.stream()`` (see
``stream_with_hook``), and the operator maps over a list of prompts like any other operator.

Runs unchanged against the local emulator or real fal: only the ``fal_default`` connection differs.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from fal_provider.operators.streaming import FalStreamOperator

LLM = "fal-ai/any-llm"
MODEL = "google/gemini-flash-1.5"

with DAG(
    dag_id="example_fal_stream",
    schedule=None,
    catchup=False,
    tags=["fal", "example", "streaming"],
    params={
        "prompt": Param("Explain in two sentences why the sky is blue.", type="string"),
        "topics": Param(["tides", "rainbows"], type="array"),
    },
    doc_md=__doc__,
) as dag:
    answer = FalStreamOperator(
        task_id="ask_llm",
        app_id=LLM,
        arguments={"prompt": "{{ params.prompt }}", "model": MODEL},
        select="output",
        log_interval=1.0,
        timeout=300,
        idle_timeout=60,
    )

    @task
    def summarize(text: str) -> dict[str, Any]:
        """A downstream step that only sees the final answer, never the partial events."""
        return {"words": len(text.split()), "answer": text}

    summarize(answer.output)

    @task
    def topic_prompts(**context: Any) -> list[dict[str, Any]]:
        return [
            {"prompt": f"One fact about {topic}.", "model": MODEL} for topic in context["params"]["topics"]
        ]

    facts = FalStreamOperator.partial(
        task_id="topic_facts", app_id=LLM, select="output", log_interval=5.0, timeout=300
    ).expand(arguments=topic_prompts())

    @task
    def stream_with_hook(**context: Any) -> dict[str, Any]:
        """TaskFlow: iterate the events yourself with the hook, e.g. to stop early or count tokens."""
        from fal_provider.hooks.fal import FalHook

        hook = FalHook()
        events = 0
        final: dict[str, Any] = {}
        try:
            for event in hook.stream(LLM, {"prompt": context["params"]["prompt"], "model": MODEL}):
                events += 1
                final = event  # the last event before the server closes the stream is the result
        finally:
            hook.close()
        return {"events": events, "answer": final.get("output")}

    @task
    def report(facts: list[str], hooked: dict[str, Any]) -> dict[str, Any]:
        return {"facts": list(facts), "hook_events": hooked["events"], "hook_answer": hooked["answer"]}

    report(facts.output, stream_with_hook())
