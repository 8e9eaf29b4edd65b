"""Deterministic PNG drawing for the image stand-ins (Pillow is an optional extra)."""

from __future__ import annotations

import hashlib
import io
from typing import Any

INSTALL_HINT = "The emulator's image models need Pillow: pip install 'airflow-provider-fal[emulator]'"


def _pil() -> Any:
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(INSTALL_HINT) from exc
    return Image, ImageDraw


def colour_for(text: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(text.encode()).digest()
    return digest[0], digest[1], digest[2]


def draw_pattern(seed_text: str, width: int, height: int, fmt: str = "PNG") -> bytes:
    """A gradient + stripes picture whose colours depend only on ``seed_text``."""
    image_cls, draw_cls = _pil()
    base = colour_for(seed_text)
    accent = colour_for(seed_text + "/accent")
    image = image_cls.new("RGB", (width, height), base)
    draw = draw_cls.Draw(image)
    stripe = max(2, width // 8)
    for x in range(0, width, stripe * 2):
        draw.rectangle([x, 0, x + stripe - 1, height // 2], fill=accent)
    draw.ellipse([width // 4, height // 2, 3 * width // 4, height - 1], outline=accent, width=2)
    return encode(image, fmt)


def encode(image: Any, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def open_image(data: bytes) -> Any:
    image_cls, _ = _pil()
    image = image_cls.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def upscale(data: bytes, scale: float, max_side: int) -> tuple[bytes, int, int]:
    """Resize by ``scale`` (capped so no side exceeds ``max_side``); returns PNG bytes and size."""
    image_cls, _ = _pil()
    image = open_image(data)
    width, height = int(image.width * scale), int(image.height * scale)
    factor = min(1.0, max_side / max(width, height))
    width, height = max(1, int(width * factor)), max(1, int(height * factor))
    resized = image.resize((width, height), image_cls.Resampling.NEAREST)
    return encode(resized), width, height


def describe(data: bytes) -> tuple[int, int, tuple[int, int, int]]:
    """Width, height and the average colour, for the captioner."""
    image = open_image(data)
    small = image.resize((1, 1))
    pixel = small.getpixel((0, 0))
    return image.width, image.height, (int(pixel[0]), int(pixel[1]), int(pixel[2]))
