"""The emulator's price table: what each app bills, in which unit, at what list price (USD).

Like fal, an app reports the quantity it bills in the ``x-fal-billable-units`` header of its
result and the price per unit is configured separately (here). Only successful answers are billed:
fal "never charges for server errors"; the emulator does not bill a 422 either (fal may, when the
runner spent GPU time). The figures mirror fal's public prices where the model exists there; they
are documented in the emulator's README and served by ``GET /platform/v1/models/pricing``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fal_provider.emulator.apps.models import IMAGE_SIZES

#: ``(arguments, output body, seconds the app ran)`` → billable units.
Measure = Callable[[Mapping[str, Any], Any, float], float]


def _real_size(value: Any) -> tuple[int, int]:
    """The size fal would render (the emulator draws a smaller picture, but bills like fal)."""
    if isinstance(value, str) and value in IMAGE_SIZES:
        return IMAGE_SIZES[value]
    if (
        isinstance(value, Mapping)
        and isinstance(value.get("width"), int)
        and isinstance(value.get("height"), int)
    ):
        return int(value["width"]), int(value["height"])
    return IMAGE_SIZES["landscape_4_3"]


def megapixels(default_size: str) -> Measure:
    """Per image, its megapixels rounded up to a whole megapixel (fal's per-megapixel models)."""

    def measure(arguments: Mapping[str, Any], body: Any, seconds: float) -> float:
        width, height = _real_size(arguments.get("image_size", default_size))
        images = len(body.get("images") or []) if isinstance(body, Mapping) else 0
        return float(images * math.ceil(width * height / 1_000_000))

    return measure


def images(arguments: Mapping[str, Any], body: Any, seconds: float) -> float:
    return float(len(body.get("images") or [])) if isinstance(body, Mapping) else 0.0


def compute_seconds(arguments: Mapping[str, Any], body: Any, seconds: float) -> float:
    """Seconds the app ran, to the millisecond, at least one millisecond."""
    return max(0.001, round(seconds, 3))


def one_request(arguments: Mapping[str, Any], body: Any, seconds: float) -> float:
    return 1.0


@dataclass(frozen=True)
class PriceEntry:
    unit: str
    unit_price: float
    measure: Measure
    #: Typical units of one call: the emulator's "historical" price when it has billed none yet.
    typical_units: float = 1.0
    currency: str = "USD"


PRICE_TABLE: dict[str, PriceEntry] = {
    "fal-ai/flux/schnell": PriceEntry("megapixels", 0.003, megapixels("landscape_4_3")),
    "fal-ai/flux/dev": PriceEntry("megapixels", 0.025, megapixels("landscape_4_3")),
    "fal-ai/fast-lcm-diffusion": PriceEntry("images", 0.0015, images),
    "fal-ai/esrgan": PriceEntry("seconds", 0.00111, compute_seconds, typical_units=0.1),
    "fal-ai/florence-2-large/more-detailed-caption": PriceEntry("requests", 0.0005, one_request),
    "fal-ai/any-llm": PriceEntry("requests", 0.001, one_request),
    "emulator/echo": PriceEntry("requests", 0.0001, one_request),
    "emulator/stream": PriceEntry("requests", 0.0001, one_request),
    "emulator/realtime": PriceEntry("requests", 0.0001, one_request),
    "emulator/fail": PriceEntry("requests", 0.0001, one_request),
}


def format_units(units: float) -> str:
    """The header value: an integer without a decimal point, else up to 6 decimals."""
    return str(int(units)) if units == int(units) else f"{units:.6f}".rstrip("0")
