"""Stand-ins for real fal models under their real ids, with deterministic outputs.

Field names follow the models' public schemas; pixel sizes are scaled down (see README.md) so
tests stay fast while outputs remain real, fetchable image files.
"""

from __future__ import annotations

import asyncio
import hashlib
from base64 import b64encode
from collections.abc import AsyncIterator
from typing import Any

from fal_provider.emulator import png
from fal_provider.emulator.apps.base import (
    AppResponse,
    EmulatedApp,
    InputError,
    RunContext,
    as_int,
    as_number,
    field_error,
    require_str,
)

# fal's named sizes (real pixels); the emulator draws them at 1/4 size, never above MAX_SIDE.
IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
SCALE_DOWN = 4
MAX_SIDE = 256
UPSCALE_MAX_SIDE = 1024


def seed_from(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def emulated_size(value: Any) -> tuple[int, int]:
    """Real fal size → small emulator size (1/4, capped at MAX_SIDE, aspect kept)."""
    if isinstance(value, str):
        if value not in IMAGE_SIZES:
            raise InputError(
                [field_error("image_size", f"Input should be one of {sorted(IMAGE_SIZES)}", "enum", value)]
            )
        width, height = IMAGE_SIZES[value]
    elif (
        isinstance(value, dict)
        and isinstance(value.get("width"), int)
        and isinstance(value.get("height"), int)
    ):
        width, height = value["width"], value["height"]
        if not (0 < width <= 14142 and 0 < height <= 14142):
            raise InputError([field_error("image_size", "Image size out of range", "value_error", value)])
    else:
        raise InputError(
            [
                field_error(
                    "image_size", "Input should be a size name or {width, height}", "value_error", value
                )
            ]
        )
    width, height = max(1, width // SCALE_DOWN), max(1, height // SCALE_DOWN)
    factor = min(1.0, MAX_SIDE / max(width, height))
    return max(1, int(width * factor)), max(1, int(height * factor))


def seed_of(arguments: dict[str, Any], prompt: str) -> int:
    """The request's ``seed``, or one derived from the prompt so outputs stay deterministic."""
    seed = arguments.get("seed")
    return as_int({"seed": seed_from(prompt) if seed is None else seed}, "seed", 0)


def image_format(arguments: dict[str, Any], name: str, default: str) -> str:
    """``png`` or ``jpeg`` from the model's format field (its name differs between models)."""
    value = arguments.get(name, default)
    if value not in ("png", "jpeg"):
        raise InputError([field_error(name, "Input should be 'jpeg' or 'png'", "enum", value)])
    return str(value)


def render_images(
    ctx: RunContext,
    prompt: str,
    seed: int,
    count: int,
    size: tuple[int, int],
    output_format: str,
    *,
    inline: str | None,
) -> list[dict[str, Any]]:
    """fal image objects; files go to the CDN unless ``inline`` is ``data_uri`` or ``bytes``.

    ``bytes`` puts the raw file under ``content`` (no ``url``), which is how fal's realtime
    image models answer with ``sync_mode`` (msgpack carries binary natively).
    """
    width, height = size
    content_type = f"image/{output_format}"
    extension = "png" if output_format == "png" else "jpg"
    images = []
    for index in range(count):
        data = png.draw_pattern(f"{prompt}|{seed}|{index}", width, height, output_format.upper())
        image: dict[str, Any] = {"width": width, "height": height, "content_type": content_type}
        if inline == "bytes":
            image["content"] = data
        elif inline == "data_uri":
            image["url"] = f"data:{content_type};base64,{b64encode(data).decode()}"
        else:
            image["url"] = ctx.store_file(data, content_type, f"{seed}-{index}.{extension}")
        images.append(image)
    return images


def text_to_image_body(
    ctx: RunContext, images: list[dict[str, Any]], prompt: str, seed: int, base_seconds: float
) -> dict[str, Any]:
    """The output shape fal's text-to-image models share."""
    return {
        "images": images,
        "timings": {"inference": base_seconds * ctx.config.latency_scale},
        "seed": seed,
        "has_nsfw_concepts": [False] * len(images),
        "prompt": prompt,
    }


class FluxApp(EmulatedApp):
    """``fal-ai/flux/schnell`` and ``fal-ai/flux/dev`` text-to-image."""

    def __init__(self, app_id: str, default_steps: int, max_steps: int, base_seconds: float) -> None:
        self.app_id = app_id
        self.description = "Text-to-image stand-in (PNG pattern seeded by prompt+seed)."
        self._default_steps = default_steps
        self._max_steps = max_steps
        self._base_seconds = base_seconds

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        prompt = require_str(arguments, "prompt")
        width, height = emulated_size(arguments.get("image_size", "landscape_4_3"))
        num_images = as_int(arguments, "num_images", 1, minimum=1, maximum=4)
        steps = as_int(
            arguments, "num_inference_steps", self._default_steps, minimum=1, maximum=self._max_steps
        )
        seed = seed_of(arguments, prompt)
        output_format = image_format(arguments, "output_format", "png")
        ctx.log(f"Generating {num_images} image(s) with {steps} steps")
        await ctx.sleep(self._base_seconds)
        images = render_images(
            ctx,
            prompt,
            seed,
            num_images,
            (width, height),
            output_format,
            inline="data_uri" if arguments.get("sync_mode") else None,
        )
        body = text_to_image_body(ctx, images, prompt, seed, self._base_seconds)
        return AppResponse(200, body)


class FastLcmApp(EmulatedApp):
    """``fal-ai/fast-lcm-diffusion``: fal's documented realtime text-to-image model.

    The same generation answers the queue, ``/run`` and ``/realtime``; over realtime
    ``sync_mode`` returns each image's bytes under ``content`` instead of a URL.
    """

    app_id = "fal-ai/fast-lcm-diffusion"
    description = "Realtime-capable text-to-image stand-in (JPEG pattern seeded by prompt+seed)."
    has_realtime = True
    base_seconds = 0.05

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        inline = "data_uri" if arguments.get("sync_mode") else None
        return AppResponse(200, await self._generate(ctx, arguments, inline))

    async def realtime_reply(self, ctx: RunContext, message: Any) -> Any:
        arguments = message if isinstance(message, dict) else {}
        return await self._generate(ctx, arguments, "bytes" if arguments.get("sync_mode") else None)

    async def _generate(
        self, ctx: RunContext, arguments: dict[str, Any], inline: str | None
    ) -> dict[str, Any]:
        prompt = require_str(arguments, "prompt")
        size = emulated_size(arguments.get("image_size", "square_hd"))
        num_images = as_int(arguments, "num_images", 1, minimum=1, maximum=8)
        as_int(arguments, "num_inference_steps", 6, minimum=1, maximum=24)
        seed = seed_of(arguments, prompt)
        output_format = image_format(arguments, "format", "jpeg")
        await ctx.sleep(self.base_seconds)
        images = render_images(ctx, prompt, seed, num_images, size, output_format, inline=inline)
        return text_to_image_body(ctx, images, prompt, seed, self.base_seconds)


class _ImageInputApp(EmulatedApp):
    async def load_input(self, ctx: RunContext, arguments: dict[str, Any]) -> bytes:
        url = require_str(arguments, "image_url")
        try:
            data, _ = await ctx.fetch(url)
            png.open_image(data)
        except RuntimeError:
            raise
        except Exception as exc:
            raise InputError(
                [
                    field_error(
                        "image_url",
                        f"Failed to load the image: {type(exc).__name__}",
                        "image_load_error",
                        url,
                    )
                ]
            ) from exc
        return data


class EsrganApp(_ImageInputApp):
    """``fal-ai/esrgan`` upscaler: returns the input enlarged by ``scale`` (output capped at 1024 px)."""

    app_id = "fal-ai/esrgan"
    description = "Upscaler stand-in (nearest-neighbour resize)."

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        scale = as_number(arguments, "scale", 2.0, minimum=1.0, maximum=8)
        data = await self.load_input(ctx, arguments)
        await ctx.sleep(0.1)
        output, width, height = png.upscale(data, scale, UPSCALE_MAX_SIDE)
        url = ctx.store_file(output, "image/png", "upscaled.png")
        image = {
            "url": url,
            "width": width,
            "height": height,
            "content_type": "image/png",
            "file_name": "upscaled.png",
            "file_size": len(output),
        }
        return AppResponse(200, {"image": image})


class FlorenceCaptionApp(_ImageInputApp):
    """``fal-ai/florence-2-large/more-detailed-caption``: a caption naming size and average colour."""

    app_id = "fal-ai/florence-2-large/more-detailed-caption"
    description = "Captioner stand-in (describes size and average colour)."

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        data = await self.load_input(ctx, arguments)
        await ctx.sleep(0.1)
        width, height, (red, green, blue) = png.describe(data)
        caption = (
            f"The image is {width} by {height} pixels. Its average colour is "
            f"rgb({red}, {green}, {blue}), with a pattern of stripes and an ellipse."
        )
        return AppResponse(200, {"results": caption})


class AnyLlmApp(EmulatedApp):
    """``fal-ai/any-llm`` with ``/stream``: deterministic text emitted token by token."""

    app_id = "fal-ai/any-llm"
    description = "LLM stand-in; /stream emits growing output with partial=true."
    has_stream = True

    def _text(self, arguments: dict[str, Any]) -> str:
        prompt = require_str(arguments, "prompt")
        model = arguments.get("model", "google/gemini-flash-1.5")
        words = prompt.split()[:12]
        return f"[{model}] You asked about: {' '.join(words)}. This is an emulated answer."

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        text = self._text(arguments)
        await asyncio.sleep(ctx.config.llm_token_interval_s * len(text.split()))
        return AppResponse(200, {"output": text, "partial": False, "error": None})

    async def stream(self, ctx: RunContext, arguments: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        tokens = self._text(arguments).split(" ")
        output = ""
        for token in tokens:
            await asyncio.sleep(ctx.config.llm_token_interval_s)
            output = f"{output} {token}" if output else token
            yield {"output": output, "partial": True, "error": None}
        yield {"output": output, "partial": False, "error": None}


def model_apps() -> list[EmulatedApp]:
    return [
        FluxApp("fal-ai/flux/schnell", default_steps=4, max_steps=12, base_seconds=0.1),
        FluxApp("fal-ai/flux/dev", default_steps=28, max_steps=50, base_seconds=0.2),
        EsrganApp(),
        FlorenceCaptionApp(),
        AnyLlmApp(),
        FastLcmApp(),
    ]
