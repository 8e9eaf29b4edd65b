"""fal's own client (fal-client 1.0.3), unchanged, against the emulator: the fidelity judge."""

from __future__ import annotations

import io
from pathlib import Path

import fal_client
import httpx
import pytest
from fal_client.client import RealtimeError

from fal_provider.emulator.testing import FalEmulator


def test_subscribe_with_logs_and_queue_updates(emu: FalEmulator):
    updates: list[fal_client.Status] = []
    enqueued: list[str] = []
    result = fal_client.subscribe(
        "emulator/echo",
        {"duration_s": 0.3, "log_lines": 2, "x": "y"},
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=updates.append,
    )
    assert result == {"duration_s": 0.3, "log_lines": 2, "x": "y"}
    assert len(enqueued) == 1
    final = updates[-1]
    assert isinstance(final, fal_client.Completed)
    assert [log["message"] for log in final.logs or []] == ["log line 1 of 2", "log line 2 of 2"]
    assert "inference_time" in final.metrics


def test_submit_status_result_and_handle(emu: FalEmulator):
    handle = fal_client.submit("fal-ai/flux/schnell", {"prompt": "a red fox", "seed": 7}, hint="h1")
    assert handle.response_url.startswith(emu.queue_url + "/fal-ai/flux/requests/")
    output = handle.get()
    assert output["seed"] == 7 and output["prompt"] == "a red fox"
    image = httpx.get(output["images"][0]["url"])
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    status = fal_client.status("fal-ai/flux/schnell", handle.request_id, with_logs=True)
    assert isinstance(status, fal_client.Completed) and status.error is None
    assert fal_client.result("fal-ai/flux/schnell", handle.request_id)["seed"] == 7
    assert emu.request_info(handle.request_id)["options"]["runner_hint"] == "h1"


def test_iter_events_yields_queue_then_progress(emu: FalEmulator):
    emu.configure(concurrency=1)
    blocker = fal_client.submit("emulator/echo", {"duration_s": 1.0})
    handle = fal_client.submit("emulator/echo", {"duration_s": 0.2}, priority="low")
    kinds = {type(event).__name__ for event in handle.iter_events(with_logs=True, interval=0.05)}
    assert {"Queued", "InProgress"} <= kinds
    assert blocker.get() == {"duration_s": 1.0}


def test_cancel_and_errors_surface_as_fal_client_errors(emu: FalEmulator):
    handle = fal_client.submit("emulator/echo", {"duration_s": 5})
    handle.cancel()
    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error_type == "client_cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as cancelled:
        handle.get()
    assert cancelled.value.status_code == 499 and cancelled.value.error_type == "client_cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as again:
        handle.cancel()
    assert again.value.status_code == 400 and "ALREADY_COMPLETED" in again.value.message
    with pytest.raises(fal_client.FalClientHTTPError) as invalid:
        fal_client.subscribe("emulator/fail", {"kind": "validation"})
    assert invalid.value.status_code == 422
    assert invalid.value.response_headers["x-fal-retryable"] == "false"


def test_client_timeout_cancels_request(emu: FalEmulator):
    with pytest.raises(fal_client.FalClientTimeoutError):
        fal_client.subscribe("emulator/echo", {"duration_s": 5}, client_timeout=1.5)
    stats = emu.stats()
    assert stats["cancels"] == 1


def test_run_and_run_errors(emu: FalEmulator):
    assert fal_client.run("emulator/echo", {"a": [1, 2]}) == {"a": [1, 2]}
    caption = fal_client.run(
        "fal-ai/florence-2-large/more-detailed-caption",
        {"image_url": fal_client.run("fal-ai/flux/schnell", {"prompt": "sky"})["images"][0]["url"]},
    )
    assert "256 by 192 pixels" in caption["results"]
    with pytest.raises(fal_client.FalClientHTTPError) as runner:
        fal_client.run("emulator/fail", {"kind": "runner"})
    assert runner.value.status_code == 503 and runner.value.error_type == "runner_disconnected"


def test_stream(emu: FalEmulator):
    events = list(fal_client.stream("emulator/stream", {"count": 3}))
    assert events[:3] == [{"progress": i, "count": 3} for i in (1, 2, 3)]
    assert events[-1]["done"] is True
    llm = list(fal_client.stream("fal-ai/any-llm", {"prompt": "why is the sky blue"}))
    assert all(event["partial"] for event in llm[:-1]) and llm[-1]["partial"] is False
    assert llm[-1]["output"].startswith(llm[0]["output"])


def test_realtime_sync_roundtrip_and_errors(emu: FalEmulator):
    with fal_client.realtime("emulator/realtime") as connection:
        connection.send({"prompt": "hi", "n": 1})
        assert connection.recv() == {"prompt": "hi", "n": 1}
        connection.send({"x_fal_message": "meta", "n": 2})
        assert connection.recv() == {"x_fal_message": "meta", "n": 2}  # x-fal-message frame skipped
        connection.send({"x_fal_error": "INTERNAL_ERROR"})
        with pytest.raises(RealtimeError) as error:
            connection.recv()
        assert error.value.error == "INTERNAL_ERROR"
    with fal_client.realtime("emulator/realtime", use_jwt=False, max_buffering=5) as connection:
        connection.send({"close": True})
        assert connection.recv() is None
    assert emu.stats()["realtime_sessions"] == 2


def test_realtime_model_stand_in(emu: FalEmulator):
    with fal_client.realtime("fal-ai/fast-lcm-diffusion") as connection:
        connection.send({"prompt": "a lighthouse", "seed": 5})
        by_url = connection.recv()
        connection.send({"prompt": "a lighthouse", "seed": 5, "sync_mode": True})
        inline = connection.recv()
        assert by_url is not None and inline is not None
        connection.send({"seed": 5})
        with pytest.raises(RealtimeError) as error:
            connection.recv()
    assert by_url["seed"] == 5 and by_url["prompt"] == "a lighthouse"
    assert inline["images"][0]["content"] == httpx.get(by_url["images"][0]["url"]).content
    assert error.value.error == "INTERNAL_ERROR"
    result = fal_client.subscribe("fal-ai/fast-lcm-diffusion", {"prompt": "a lighthouse", "seed": 5})
    assert result["images"][0]["content_type"] == "image/jpeg" and result["seed"] == 5


async def test_async_client_end_to_end(emu: FalEmulator):
    result = await fal_client.subscribe_async("emulator/echo", {"async": True}, with_logs=True)
    assert result == {"async": True}
    handle = await fal_client.submit_async("emulator/echo", {"duration_s": 5})
    await handle.cancel()
    status = await handle.status()
    assert isinstance(status, fal_client.Completed) and status.error_type == "client_cancelled"
    assert await fal_client.run_async("emulator/echo", {"b": 2}) == {"b": 2}
    events = [event async for event in fal_client.stream_async("emulator/stream", {"count": 2})]
    assert events[-1]["done"] is True
    async with fal_client.realtime_async("emulator/realtime") as connection:
        await connection.send({"hello": "async"})
        assert await connection.recv() == {"hello": "async"}
    url = await fal_client.upload_async(b"async bytes", "text/plain", file_name="a.txt")
    assert httpx.get(url).content == b"async bytes"


def test_upload_bytes_file_and_image(emu: FalEmulator, tmp_path: Path):
    url = fal_client.upload(b"hello emulator", "text/plain", file_name="hello.txt")
    fetched = httpx.get(url)
    assert fetched.content == b"hello emulator" and fetched.headers["content-type"] == "text/plain"
    path = tmp_path / "data.json"
    path.write_text('{"k": 1}')
    assert httpx.get(fal_client.upload_file(path)).json() == {"k": 1}
    from PIL import Image

    image = Image.new("RGB", (40, 30), (0, 200, 0))
    image_url = fal_client.upload_image(image, format="png")
    upscaled = fal_client.run("fal-ai/esrgan", {"image_url": image_url, "scale": 3})["image"]
    assert (upscaled["width"], upscaled["height"]) == (120, 90)
    assert Image.open(io.BytesIO(httpx.get(upscaled["url"]).content)).size == (120, 90)
    assert emu.stats()["uploads"] == 3


def test_multipart_upload_with_small_forced_threshold(emu: FalEmulator, monkeypatch: pytest.MonkeyPatch):
    import fal_client.client as fal_module

    monkeypatch.setattr(fal_module, "MULTIPART_THRESHOLD", 1000)
    monkeypatch.setattr(fal_module, "MULTIPART_CHUNK_SIZE", 700)
    data = bytes(range(256)) * 10
    url = fal_client.upload(data, "application/octet-stream", file_name="big.bin")
    assert httpx.get(url).content == data


def test_storage_fallback_repository(emu: FalEmulator):
    url = fal_client.upload(b"via gcs path", "text/plain", repository="fal")
    assert httpx.get(url).content == b"via gcs path"
