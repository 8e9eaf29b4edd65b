"""The emulator's Platform API over real HTTP: scopes, the error envelope, limits, the price table,
billing totals by tag, deprecations, and model schemas that agree with what the apps accept."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from fal_provider.emulator.billing import parse_tags
from fal_provider.emulator.pricing import PRICE_TABLE
from fal_provider.emulator.testing import FalEmulator


def get(emu: FalEmulator, path: str, key: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Key {key}"} if key else {}
    return httpx.get(f"{emu.platform_url}{path}", params=params, headers=headers, timeout=30)


def test_scopes_and_the_error_envelope(fal_emulator: FalEmulator) -> None:
    missing = get(fal_emulator, "/models/pricing", None, endpoint_id="fal-ai/flux/dev")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authorization_error"
    assert set(missing.json()["error"]) == {"type", "message", "docs_url", "request_id"}
    wrong = get(fal_emulator, "/models/pricing", "someone:else", endpoint_id="fal-ai/flux/dev")
    assert wrong.status_code == 401
    refused = get(fal_emulator, "/models/billing-events", fal_emulator.key)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "authorization_error"
    assert get(fal_emulator, "/models/billing-events", fal_emulator.admin_key).status_code == 200
    # The admin key may call API-scoped operations too.
    assert (
        get(
            fal_emulator, "/models/pricing", fal_emulator.admin_key, endpoint_id="fal-ai/flux/dev"
        ).status_code
        == 200
    )


def test_more_than_fifty_ids_is_a_validation_error(fal_emulator: FalEmulator) -> None:
    ids = [f"o/a{n}" for n in range(51)]
    answer = get(fal_emulator, "/models/pricing", fal_emulator.key, endpoint_id=ids)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "validation_error"


def test_price_table_is_served_as_documented(fal_emulator: FalEmulator) -> None:
    answer = get(fal_emulator, "/models/pricing", fal_emulator.key, endpoint_id=list(PRICE_TABLE))
    served = {p["endpoint_id"]: (p["unit"], p["unit_price"]) for p in answer.json()["prices"]}
    assert served == {k: (v.unit, v.unit_price) for k, v in PRICE_TABLE.items()}
    assert {unit for unit, _ in served.values()} >= {"megapixels", "images", "seconds", "requests"}


def test_billed_total_by_tag(fal_emulator: FalEmulator) -> None:
    auth = {"Authorization": f"Key {fal_emulator.key}"}
    for tags in ("airflow.dag=a,airflow.task=t1", "airflow.dag=a,airflow.task=t2", "airflow.dag=b"):
        response = httpx.post(
            f"{fal_emulator.run_url}/fal-ai/flux/dev",
            json={"prompt": "x"},
            headers={**auth, "X-Fal-Tags": tags},
        )
        assert response.headers["x-fal-billable-units"] == "1"
    assert fal_emulator.billed_total(**{"airflow.dag": "a"}) == pytest.approx(0.05)
    assert fal_emulator.billed_total() == pytest.approx(0.075)
    assert fal_emulator.billing(**{"airflow.task": "t2"})["count"] == 1


def test_tag_rules_drop_bad_tags_not_the_request() -> None:
    assert parse_tags("Team=ML,fal.internal=x,bad key=1,ok=fine") == {"team": "ML", "ok": "fine"}
    assert parse_tags('{"a": "1"}') == {"a": "1"}
    assert parse_tags(",".join(f"k{n}=v" for n in range(12))) == {f"k{n}": "v" for n in range(10)}
    assert parse_tags("x=" + "y" * 2000) == {}


def test_deprecated_model_names_its_replacement(fal_emulator: FalEmulator) -> None:
    fal_emulator.deprecate("fal-ai/flux/dev", "fal-ai/flux/schnell")
    entry = get(fal_emulator, "/models", fal_emulator.key, endpoint_id="fal-ai/flux/dev").json()["models"][0]
    assert entry["metadata"]["status"] == "deprecated"
    assert entry["metadata"]["replacement_endpoint_id"] == "fal-ai/flux/schnell"
    fal_emulator.reset()
    entry = get(fal_emulator, "/models", fal_emulator.key, endpoint_id="fal-ai/flux/dev").json()["models"][0]
    assert entry["metadata"]["status"] == "active"


SAMPLES: dict[str, list[dict[str, Any]]] = {
    "fal-ai/flux/schnell": [
        {"prompt": "x"},
        {},
        {"prompt": 1},
        {"prompt": "x", "num_images": 5},
        {"prompt": "x", "num_inference_steps": 13},
        {"prompt": "x", "image_size": "huge"},
        {"prompt": "x", "image_size": {"width": 64, "height": 64}},
        {"prompt": "x", "output_format": "gif"},
        {"prompt": "x", "seed": "s"},
    ],
    "fal-ai/flux/dev": [
        {"prompt": "x", "num_inference_steps": 50},
        {"prompt": "x", "num_inference_steps": 51},
    ],
    "fal-ai/fast-lcm-diffusion": [
        {"prompt": "x", "num_images": 8},
        {"prompt": "x", "format": "png"},
        {"format": "png"},
    ],
    "fal-ai/any-llm": [{"prompt": "hi"}, {"model": "m"}],
    "emulator/echo": [{"anything": [1, 2]}, {"duration_s": -1}, {"log_lines": "3"}],
    "emulator/fail": [{"kind": "oops"}],
}


@pytest.mark.parametrize("endpoint_id", sorted(SAMPLES))
def test_served_schemas_accept_exactly_what_the_apps_accept(
    fal_emulator: FalEmulator, endpoint_id: str
) -> None:
    entry = get(
        fal_emulator, "/models", fal_emulator.key, endpoint_id=endpoint_id, expand="openapi-3.0"
    ).json()
    document = entry["models"][0]["openapi"]
    body = document["paths"][f"/{endpoint_id}"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    validator = Draft202012Validator({**body, "components": document["components"]})
    for arguments in SAMPLES[endpoint_id]:
        answer = httpx.post(
            f"{fal_emulator.run_url}/{endpoint_id}",
            json=arguments,
            headers={"Authorization": f"Key {fal_emulator.key}"},
            timeout=30,
        )
        app_accepts = answer.status_code != 422
        assert validator.is_valid(arguments) == app_accepts, (endpoint_id, arguments, answer.text[:200])
