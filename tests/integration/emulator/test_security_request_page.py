"""The emulator's page for people: what a task's extra link opens when it ran against the emulator."""

from __future__ import annotations

import httpx

from fal_provider.emulator.testing import FalEmulator
from fal_provider.hooks.fal import FalHook
from fal_provider.operators.lifecycle import request_url


def test_page_shows_status_logs_input_and_previews_escaped_and_without_the_key(
    fal_emulator_conn: FalEmulator,
) -> None:
    hook = FalHook()
    ref = hook.submit("fal-ai/fast-lcm-diffusion", {"prompt": "<script>alert(1)</script>", "num_images": 2})
    list(hook.iter_status(ref))  # fal's status stream ends once the request is done
    url = request_url(ref, hook.settings.queue_url, hook.settings.request_page_url)
    assert url == f"{fal_emulator_conn.base_url}/_emulator/requests/{ref.request_id}/view"

    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "COMPLETED" in text and "fal-ai/fast-lcm-diffusion" in text
    assert text.count("<img ") == 2, "one preview per generated image"
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert fal_emulator_conn.key not in text and "emulator-key-secret" not in text, "headers are never shown"
    for src in text.split('<img src="')[1:]:
        image = httpx.get(src.split('"', 1)[0], timeout=30)
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8", "a real JPEG"


def test_page_of_a_queued_request_refreshes_and_unknown_ids_are_404(fal_emulator_conn: FalEmulator) -> None:
    fal_emulator_conn.configure(app_concurrency={"emulator/echo": 1})
    hook = FalHook()
    hook.submit("emulator/echo", {"duration_s": 30})
    queued = hook.submit("emulator/echo", {"duration_s": 0})
    page = httpx.get(f"{fal_emulator_conn.base_url}/_emulator/requests/{queued.request_id}/view", timeout=30)
    assert "IN_QUEUE" in page.text and "Queue position" in page.text and 'http-equiv="refresh"' in page.text
    missing = httpx.get(f"{fal_emulator_conn.base_url}/_emulator/requests/nope/view", timeout=30)
    assert missing.status_code == 404
