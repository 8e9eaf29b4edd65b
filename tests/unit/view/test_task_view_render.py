"""The task view's page: what it finds to preview, what it shows, when it refreshes itself."""

from __future__ import annotations

from datetime import datetime, timezone

from fal_provider.view.data import LiveStatus, TaskView
from fal_provider.view.render import Media, find_media, render_page
from fal_provider.webhooks.urls import TaskIdentity

KEY = TaskIdentity("dag", "run", "task")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _view(**changes: object) -> TaskView:
    fields: dict = {"key": KEY, "state": "success", "try_number": 2, "operator": "FalInferenceOperator"}
    fields.update({"start_date": T0, "end_date": T0.replace(second=9)})
    fields.update(changes)
    return TaskView(**fields)


def test_media_is_found_in_fal_file_objects_bare_urls_and_data_urls() -> None:
    output = {
        "images": [{"url": "https://v3.fal.media/a.bin", "content_type": "image/png"}],
        "video": {"url": "https://v3.fal.media/clip.mp4"},
        "audio_url": "https://v3.fal.media/voice.wav",
        "thumb": "data:image/png;base64,iVBORw0KGgo=",
        "text": "https://example.com/page.html",
    }
    assert list(find_media(output, "")) == [
        Media("image", "https://v3.fal.media/a.bin", "images[0]"),
        Media("video", "https://v3.fal.media/clip.mp4", "video"),
        Media("audio", "https://v3.fal.media/voice.wav", "audio_url"),
        Media("image", "data:image/png;base64,iVBORw0KGgo=", "thumb"),
    ]


def test_finished_page_shows_request_status_cost_inputs_and_previews() -> None:
    view = _view(
        request={"app_id": "fal-ai/flux/schnell", "request_id": "req-9"},
        link="https://fal.ai/dashboard/requests?requestId=req-9",
        cost={"cost": 0.003, "currency": "USD"},
        result={"images": [{"url": "https://v3.fal.media/x.png", "content_type": "image/png"}]},
        has_result=True,
        inputs={"arguments": {"prompt": "a fox"}},
        live=LiveStatus(status="COMPLETED", logs=[{"message": "step 4/4"}], metrics={"inference_time": 1.5}),
    )
    page = render_page(view)
    for text in ("fal-ai/flux/schnell", "req-9", "COMPLETED", "step 4/4", "inference_time", "0.003", "a fox"):
        assert text in page
    assert '<img class="preview" src="https://v3.fal.media/x.png"' in page
    assert 'href="https://fal.ai/dashboard/requests?requestId=req-9"' in page
    assert "0:00:09" in page, "the try's duration"
    assert 'http-equiv="refresh"' not in page, "a finished try does not reload itself"


def test_waiting_page_refreshes_and_shows_queue_position() -> None:
    view = _view(
        state="deferred",
        request={"app_id": "a/b", "request_id": "r"},
        live=LiveStatus(status="IN_QUEUE", queue_position=3),
    )
    page = render_page(view)
    assert 'http-equiv="refresh"' in page and "Queue position" in page and ">3<" in page
    assert "has not returned a result yet" in page


def test_unreachable_fal_and_no_request_are_said_plainly() -> None:
    page = render_page(
        _view(request={"app_id": "a/b", "request_id": "r"}, live=LiveStatus(unavailable="FalTimeoutError: x"))
    )
    assert "Live status unavailable (FalTimeoutError: x)" in page
    assert "has not submitted a fal request" in render_page(_view(state="running"))
