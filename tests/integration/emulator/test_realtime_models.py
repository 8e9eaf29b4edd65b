"""``fal-ai/fast-lcm-diffusion``: one deterministic generation behind realtime, queue and run."""

from __future__ import annotations

import base64
import json

import httpx
import msgpack
from websockets.sync.client import connect

from fal_provider.emulator.testing import FalEmulator
from tests.integration.emulator.helpers import submit, wait_completed
from tests.integration.emulator.test_realtime import token_for, ws_url

APP = "fal-ai/fast-lcm-diffusion"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG"


def exchange(ws: object, message: dict[str, object]) -> object:
    ws.send(msgpack.packb(message, use_bin_type=True))  # type: ignore[attr-defined]
    frame = ws.recv()  # type: ignore[attr-defined]
    return json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame, raw=False)


def test_realtime_returns_cdn_images_or_inline_bytes(client: httpx.Client, emu: FalEmulator):
    token = token_for(client, "fast-lcm-diffusion")
    with connect(ws_url(emu, f"{APP}/realtime", fal_jwt_token=token)) as ws:
        by_url = exchange(ws, {"prompt": "a lighthouse", "seed": 7})
        inline = exchange(ws, {"prompt": "a lighthouse", "seed": 7, "sync_mode": True})
        other = exchange(ws, {"prompt": "a lighthouse", "seed": 8, "sync_mode": True, "format": "png"})

    assert isinstance(by_url, dict) and isinstance(inline, dict) and isinstance(other, dict)
    assert by_url["seed"] == 7 and by_url["prompt"] == "a lighthouse"
    assert by_url["has_nsfw_concepts"] == [False] and "inference" in by_url["timings"]
    image = by_url["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (256, 256, "image/jpeg")
    assert image["url"].startswith(f"{emu.cdn_url}/files/")
    fetched = httpx.get(image["url"]).content
    assert fetched.startswith(JPEG_MAGIC)

    inline_image = inline["images"][0]
    assert "url" not in inline_image, "sync_mode over realtime sends the bytes, not a URL"
    assert inline_image["content"] == fetched, "same prompt and seed give the same image"
    assert other["images"][0]["content"].startswith(PNG_MAGIC)
    assert other["images"][0]["content"] != fetched
    assert emu.stats()["realtime_messages"] == 3


def test_realtime_invalid_input_is_an_error_frame_and_the_session_goes_on(emu: FalEmulator):
    headers = {"Authorization": f"Key {emu.key}"}
    with connect(ws_url(emu, f"{APP}/realtime"), additional_headers=headers) as ws:
        assert exchange(ws, {"seed": 1}) == {
            "type": "x-fal-error",
            "error": "INTERNAL_ERROR",
            "reason": "prompt: Field required",
        }
        assert exchange(ws, {"prompt": "x", "num_images": 2})["has_nsfw_concepts"] == [False, False]  # type: ignore[index]


def test_queue_and_run_share_the_schema(client: httpx.Client, emu: FalEmulator):
    queued = submit(client, APP, {"prompt": "a fox", "seed": 3, "image_size": "landscape_4_3"})
    assert "error" not in wait_completed(client, queued["status_url"])
    result = client.get(queued["response_url"]).json()
    assert (result["seed"], result["images"][0]["width"], result["images"][0]["height"]) == (3, 256, 192)

    run = client.post(f"/run/{APP}", json={"prompt": "a fox", "seed": 3, "image_size": "landscape_4_3"})
    assert run.json()["images"][0]["url"] != result["images"][0]["url"]
    assert httpx.get(run.json()["images"][0]["url"]).content == httpx.get(result["images"][0]["url"]).content

    sync = client.post(f"/run/{APP}", json={"prompt": "a fox", "sync_mode": True}).json()
    header, data = sync["images"][0]["url"].split(",", 1)
    assert header == "data:image/jpeg;base64" and base64.b64decode(data).startswith(JPEG_MAGIC)

    for bad in ({"seed": 1}, {"prompt": "x", "format": "gif"}, {"prompt": "x", "num_images": 9}):
        response = client.post(f"/run/{APP}", json=bad)
        assert response.status_code == 422, bad
