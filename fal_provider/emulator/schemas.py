"""Input models of the emulator's apps, and the OpenAPI documents the Platform API serves for them.

fal's ``GET /v1/models?expand=openapi-3.0`` returns each model's OpenAPI document, whose POST
request body is the model's input schema. These pydantic models state the same rules the apps
enforce field by field (types, required fields, ranges, enums); a test checks the two agree.
Unknown fields are allowed, as fal's models ignore them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SizeName = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
ImageFormat = Literal["png", "jpeg"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageSize(BaseModel):
    width: int = Field(gt=0, le=14142)
    height: int = Field(gt=0, le=14142)


class SchnellInput(_Input):
    prompt: str
    image_size: SizeName | ImageSize = "landscape_4_3"
    num_images: int = Field(1, ge=1, le=4)
    num_inference_steps: int = Field(4, ge=1, le=12)
    seed: int | None = None
    output_format: ImageFormat = "png"
    sync_mode: bool = False


class DevInput(SchnellInput):
    num_inference_steps: int = Field(28, ge=1, le=50)


class FastLcmInput(_Input):
    prompt: str
    image_size: SizeName | ImageSize = "square_hd"
    num_images: int = Field(1, ge=1, le=8)
    num_inference_steps: int = Field(6, ge=1, le=24)
    seed: int | None = None
    format: ImageFormat = "jpeg"
    sync_mode: bool = False


class EsrganInput(_Input):
    image_url: str
    scale: float = Field(2.0, ge=1.0, le=8.0)


class CaptionInput(_Input):
    image_url: str


class AnyLlmInput(_Input):
    prompt: str
    model: str = "google/gemini-flash-1.5"


class EchoInput(_Input):
    duration_s: float = Field(0.0, ge=0.0)
    log_lines: int = Field(0, ge=0)


class FailInput(_Input):
    kind: Literal["validation", "runner", "server"] = "server"
    duration_s: float = Field(0.0, ge=0.0)


INPUT_MODELS: dict[str, type[BaseModel]] = {
    "fal-ai/flux/schnell": SchnellInput,
    "fal-ai/flux/dev": DevInput,
    "fal-ai/fast-lcm-diffusion": FastLcmInput,
    "fal-ai/esrgan": EsrganInput,
    "fal-ai/florence-2-large/more-detailed-caption": CaptionInput,
    "fal-ai/any-llm": AnyLlmInput,
    "emulator/echo": EchoInput,
    "emulator/fail": FailInput,
}
_REF = "#/components/schemas/{model}"


def openapi_document(endpoint_id: str) -> dict[str, Any] | None:
    """An OpenAPI 3 document with the endpoint's POST and its input schema under ``components``."""
    model = INPUT_MODELS.get(endpoint_id)
    if model is None:
        return None
    schema = model.model_json_schema(ref_template=_REF)
    components = dict(schema.pop("$defs", {}))
    components[model.__name__] = schema
    body = {"$ref": _REF.format(model=model.__name__)}
    return {
        "openapi": "3.0.4",
        "info": {"title": endpoint_id, "version": "emulated"},
        "paths": {
            f"/{endpoint_id}": {
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                    "responses": {"200": {"description": "The model's output"}},
                }
            }
        },
        "components": {"schemas": components},
    }
