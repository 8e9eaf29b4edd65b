"""Storage tokens, CDN uploads (single, multipart, presigned PUT), and the image stand-ins."""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone

import httpx
from PIL import Image

from fal_provider.emulator.cdn import etag_for
from fal_provider.emulator.testing import FalEmulator


def cdn_token(client: httpx.Client) -> dict:
    response = client.post("/rest/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={})
    assert response.status_code == 200
    return response.json()


def test_storage_token_shape(client: httpx.Client, emu: FalEmulator):
    token = cdn_token(client)
    assert token["base_url"] == emu.cdn_url and token["token_type"] == "Bearer"
    assert datetime.fromisoformat(token["expires_at"]) > datetime.now(timezone.utc)


def test_single_upload_and_download(client: httpx.Client, emu: FalEmulator):
    token = cdn_token(client)
    auth = {"Authorization": f"{token['token_type']} {token['token']}"}
    response = httpx.post(
        f"{emu.cdn_url}/files/upload",
        content=b"abc",
        headers={**auth, "Content-Type": "application/x-test", "X-Fal-File-Name": "t.bin"},
    )
    url = response.json()["access_url"]
    assert url.startswith(f"{emu.cdn_url}/files/") and url.endswith("/t.bin")
    download = httpx.get(url)
    assert download.content == b"abc" and download.headers["content-type"] == "application/x-test"
    forged = httpx.post(
        f"{emu.cdn_url}/files/upload", content=b"x", headers={"Authorization": "Bearer a.b.c"}
    )
    assert forged.status_code == 401
    assert httpx.get(f"{emu.cdn_url}/files/unknown/x").status_code == 404


def test_multipart_upload(client: httpx.Client, emu: FalEmulator):
    auth = {"Authorization": f"Bearer {cdn_token(client)['token']}"}
    created = httpx.post(
        f"{emu.cdn_url}/files/upload/multipart", headers={**auth, "X-Fal-File-Name": "m.bin"}
    ).json()
    parts = [b"a" * 10, b"b" * 5]
    etags = []
    for number, data in enumerate(parts, start=1):
        put = httpx.put(
            f"{created['access_url']}/multipart/{created['uploadId']}/{number}", content=data, headers=auth
        )
        assert put.headers["etag"] == etag_for(data)
        etags.append({"partNumber": number, "etag": put.headers["etag"]})
    bad = httpx.post(
        f"{created['access_url']}/multipart/{created['uploadId']}/complete",
        headers=auth,
        json={"parts": [{"partNumber": 1, "etag": '"wrong"'}]},
    )
    assert bad.status_code == 400
    done = httpx.post(
        f"{created['access_url']}/multipart/{created['uploadId']}/complete",
        headers=auth,
        json={"parts": etags},
    )
    assert done.status_code == 200
    assert httpx.get(created["access_url"]).content == b"a" * 10 + b"b" * 5


def test_presigned_initiate_and_put(client: httpx.Client):
    init = client.post(
        "/rest/storage/upload/initiate",
        params={"storage_type": "gcs"},
        json={"file_name": "f.txt", "content_type": "text/plain"},
    ).json()
    assert httpx.put(init["upload_url"], content=b"put!").status_code == 200
    assert httpx.get(init["file_url"]).content == b"put!"
    tampered = init["upload_url"].replace("token=", "token=x")
    assert httpx.put(tampered, content=b"no").status_code == 403


def test_flux_images_are_deterministic_real_pngs(client: httpx.Client):
    body = {"prompt": "lighthouse", "seed": 42, "image_size": "square_hd", "num_images": 2}
    first = client.post("/run/fal-ai/flux/dev", json=body).json()
    second = client.post("/run/fal-ai/flux/dev", json=body).json()
    assert first["seed"] == 42 and first["has_nsfw_concepts"] == [False, False]
    assert len(first["images"]) == 2
    image = first["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (256, 256, "image/png")
    data = [httpx.get(i["url"]).content for i in (first["images"][0], second["images"][0])]
    assert data[0] == data[1]
    assert Image.open(io.BytesIO(data[0])).size == (256, 256)
    other = client.post("/run/fal-ai/flux/dev", json={**body, "seed": 43}).json()
    assert httpx.get(other["images"][0]["url"]).content != data[0]
    custom = client.post(
        "/run/fal-ai/flux/schnell", json={"prompt": "p", "image_size": {"width": 640, "height": 480}}
    )
    assert (custom.json()["images"][0]["width"], custom.json()["images"][0]["height"]) == (160, 120)
    assert (
        client.post("/run/fal-ai/flux/schnell", json={"prompt": "p", "image_size": "huge"}).status_code == 422
    )


def test_upscaler_accepts_data_uri_and_caption_mentions_size(client: httpx.Client):
    buffer = io.BytesIO()
    Image.new("RGB", (10, 8), (255, 0, 0)).save(buffer, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    upscaled = client.post("/run/fal-ai/esrgan", json={"image_url": data_uri}).json()["image"]
    assert (upscaled["width"], upscaled["height"]) == (20, 16)
    caption = client.post(
        "/run/fal-ai/florence-2-large/more-detailed-caption", json={"image_url": upscaled["url"]}
    ).json()["results"]
    assert "20 by 16 pixels" in caption and "rgb(255, 0, 0)" in caption
    broken = client.post("/run/fal-ai/esrgan", json={"image_url": "data:image/png;base64,AAAA"})
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "image_load_error"
