"""Queue host: submit, status, result, cancel, ordering, priority, concurrency, limits, timeouts."""

from __future__ import annotations

import httpx

from fal_provider.emulator.testing import FalEmulator
from tests.integration.emulator.helpers import submit, wait_completed, wait_for


def test_submit_returns_fal_shape_with_absolute_urls_without_sub_path(client: httpx.Client, emu: FalEmulator):
    response = client.post("/queue/fal-ai/florence-2-large/more-detailed-caption", json={"image_url": "x"})
    assert response.status_code == 200
    body = response.json()
    rid = body["request_id"]
    assert response.headers["x-fal-request-id"] == rid
    assert body["gateway_request_id"] == rid
    assert body["status"] == "IN_QUEUE"
    assert body["queue_position"] == 0
    base = f"{emu.queue_url}/fal-ai/florence-2-large/requests/{rid}"
    assert body["response_url"] == base
    assert body["status_url"] == f"{base}/status"
    assert body["cancel_url"] == f"{base}/cancel"


def test_status_progresses_with_logs_and_codes(client: httpx.Client):
    sub = submit(client, "emulator/echo", {"duration_s": 0.6, "log_lines": 3, "v": 1})
    running = wait_for(
        lambda: (
            (b := client.get(sub["status_url"], params={"logs": "1"})).json()["status"] == "IN_PROGRESS" and b
        )
    )
    assert running.status_code == 202
    assert "logs" in running.json()
    no_logs = client.get(sub["status_url"], params={"logs": "false"}).json()
    assert no_logs["logs"] is None
    done = wait_completed(client, sub["status_url"] + "?logs=true")
    assert [entry["message"] for entry in done["logs"]] == [f"log line {i} of 3" for i in (1, 2, 3)]
    assert set(done["logs"][0]) >= {"message", "level", "source", "timestamp"}
    assert done["metrics"]["inference_time"] >= 0.5
    assert "error" not in done
    final = client.get(sub["status_url"] + "/")
    assert final.status_code == 200
    assert final.json()["request_id"] == sub["request_id"]
    result = client.get(sub["response_url"])
    assert result.status_code == 200
    assert result.json() == {"duration_s": 0.6, "log_lines": 3, "v": 1}
    assert client.get(sub["response_url"] + "/response").json()["v"] == 1
    assert client.get(sub["response_url"] + "/").json()["v"] == 1


def test_full_endpoint_id_status_paths_are_accepted(client: httpx.Client):
    sub = submit(client, "fal-ai/florence-2-large/more-detailed-caption", {})
    rid = sub["request_id"]
    full = f"/queue/fal-ai/florence-2-large/more-detailed-caption/requests/{rid}"
    wait_completed(client, f"{full}/status")
    assert client.get(full).status_code == 422  # missing image_url: the model's validation error
    assert client.get(f"/queue/other/app/requests/{rid}/status").status_code == 404


def test_result_before_completion_is_400_and_unknown_ids_are_404(client: httpx.Client):
    sub = submit(client, "emulator/echo", {"duration_s": 1.0})
    early = client.get(sub["response_url"])
    assert early.status_code == 400
    assert early.json() == {"detail": "Request is still in progress"}
    assert client.get("/queue/emulator/echo/requests/nope/status").status_code == 404
    assert client.get("/queue/emulator/echo/requests/nope").status_code == 404
    missing = client.put("/queue/emulator/echo/requests/nope/cancel")
    assert (missing.status_code, missing.json()) == (404, {"status": "NOT_FOUND"})


def test_unknown_ids_are_gated_and_counted_like_known_ones(client: httpx.Client, emu: FalEmulator):
    not_found = {"detail": "Request nope not found"}
    for path in ("status", "status/stream", "", "response"):
        response = client.get(f"/queue/emulator/echo/requests/nope/{path}".rstrip("/"))
        assert (response.status_code, response.json()) == (404, not_found), path
    assert client.post("/queue/emulator/echo/requests/nope/status").status_code == 404
    stats = emu.stats()
    assert (stats["status_stream_calls"], stats["result_calls"]) == (1, 2)
    emu.set_faults(kind="429", count=1, endpoints=["result"])
    assert client.get("/queue/emulator/echo/requests/nope").status_code == 429, "faults fire before lookup"


def test_range_errors_name_the_bound(client: httpx.Client):
    too_many = client.post("/run/fal-ai/flux/schnell", json={"prompt": "x", "num_images": 5}).json()
    assert too_many["detail"][0]["type"] == "less_than_equal" and too_many["detail"][0]["ctx"] == {"le": 4}
    too_few = client.post("/run/fal-ai/flux/schnell", json={"prompt": "x", "num_images": 0}).json()
    assert too_few["detail"][0]["msg"] == "Input should be greater than or equal to 1"
    scale = client.post("/run/fal-ai/esrgan", json={"image_url": "data:,", "scale": 9}).json()
    assert scale["detail"][0]["msg"] == "Input should be less than or equal to 8"
    assert scale["detail"][0]["ctx"] == {"le": 8}


def test_unknown_app_is_404_with_detail(client: httpx.Client):
    response = client.post("/queue/nobody/nothing", json={})
    assert response.status_code == 404
    assert response.json() == {"detail": "Application 'nobody/nothing' not found"}


def test_cancel_queued_request_never_runs(client: httpx.Client, emu: FalEmulator):
    emu.configure(concurrency=1)
    blocker = submit(client, "emulator/echo", {"duration_s": 3})
    queued = submit(client, "emulator/echo", {"n": 2})
    assert queued["queue_position"] == 0
    assert client.get(queued["status_url"]).json()["status"] == "IN_QUEUE"
    cancel = client.put(queued["cancel_url"])
    assert (cancel.status_code, cancel.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    status = client.get(queued["status_url"]).json()
    assert status["status"] == "COMPLETED"
    assert status["error_type"] == "client_cancelled"
    result = client.get(queued["response_url"])
    assert result.status_code == 499
    assert result.json() == {"detail": "Request was cancelled", "error_type": "client_cancelled"}
    assert client.put(blocker["cancel_url"]).status_code == 202  # frees the only runner slot
    wait_for(lambda: emu.stats()["requests"]["IN_PROGRESS"] == 0)
    assert emu.request_info(queued["request_id"])["timings"]["started_at"] is None
    again = client.put(queued["cancel_url"])
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})


def test_cancel_running_request_stops_it(client: httpx.Client, emu: FalEmulator):
    sub = submit(client, "emulator/echo", {"duration_s": 5, "log_lines": 50})
    wait_for(lambda: client.get(sub["status_url"]).json()["status"] == "IN_PROGRESS")
    assert client.put(sub["cancel_url"]).status_code == 202
    status = client.get(sub["status_url"], params={"logs": 1}).json()
    assert status["status"] == "COMPLETED" and status["error_type"] == "client_cancelled"
    logs_after_cancel = len(status["logs"])
    assert client.get(sub["response_url"]).status_code == 499
    wait_for(lambda: emu.stats()["requests"]["IN_PROGRESS"] == 0)
    assert len(client.get(sub["status_url"], params={"logs": 1}).json()["logs"]) == logs_after_cancel


def test_fifo_order_priority_and_positions(client: httpx.Client, emu: FalEmulator):
    emu.configure(concurrency=1)
    first = submit(client, "emulator/echo", {"duration_s": 1.0})
    low = submit(client, "emulator/echo", {"k": "low"}, headers={"X-Fal-Queue-Priority": "low"})
    normal_a = submit(client, "emulator/echo", {"k": "a"})
    normal_b = submit(client, "emulator/echo", {"k": "b"})
    assert client.get(normal_a["status_url"]).json()["queue_position"] == 0
    assert client.get(normal_b["status_url"]).json()["queue_position"] == 1
    assert client.get(low["status_url"]).json()["queue_position"] == 2
    for sub in (first, low, normal_a, normal_b):
        wait_completed(client, sub["status_url"])
    started = {
        name: emu.request_info(sub["request_id"])["timings"]["started_at"]
        for name, sub in (("a", normal_a), ("b", normal_b), ("low", low))
    }
    assert started["a"] <= started["b"] <= started["low"]


def test_concurrency_limit_per_app(client: httpx.Client, emu: FalEmulator):
    emu.configure(concurrency=2, app_concurrency={"emulator/fail": 1})
    subs = [submit(client, "emulator/echo", {"duration_s": 3}) for _ in range(3)]
    wait_for(lambda: emu.stats()["requests"]["IN_PROGRESS"] == 2)
    assert client.get(subs[2]["status_url"]).json()["status"] == "IN_QUEUE"
    emu.configure(concurrency=3)  # raising the limit starts the waiting request at once
    wait_for(lambda: client.get(subs[2]["status_url"]).json()["status"] != "IN_QUEUE")
    fails = [submit(client, "emulator/fail", {"kind": "server", "duration_s": 3}) for _ in range(2)]
    wait_for(lambda: client.get(fails[0]["status_url"]).json()["status"] == "IN_PROGRESS")
    assert client.get(fails[1]["status_url"]).json()["status"] == "IN_QUEUE"  # per-app override of 1


def test_max_queue_length_rejects_with_429(client: httpx.Client, emu: FalEmulator):
    emu.configure(concurrency=1)
    submit(client, "emulator/echo", {"duration_s": 3})
    submit(client, "emulator/echo", {})
    rejected = client.post("/queue/emulator/echo", json={}, params={"fal_max_queue_length": 1})
    assert rejected.status_code == 429
    assert "detail" in rejected.json()
    assert client.post("/queue/emulator/echo", json={}, params={"fal_max_queue_length": 5}).status_code == 200


def test_start_timeout_expires_queued_request(client: httpx.Client, emu: FalEmulator):
    emu.configure(concurrency=1)
    submit(client, "emulator/echo", {"duration_s": 2.0})
    late = submit(client, "emulator/echo", {}, headers={"X-Fal-Request-Start-Timeout": "0.3"})
    status = wait_completed(client, late["status_url"])
    assert status["error_type"] == "startup_timeout"
    result = client.get(late["response_url"])
    assert result.status_code == 504
    assert result.headers["x-fal-request-timeout-type"] == "user"
    assert result.headers["x-fal-error-type"] == "startup_timeout"
    old_name = submit(client, "emulator/echo", {}, headers={"X-Fal-Request-Timeout": "30"})
    assert wait_completed(client, old_name["status_url"]).get("error") is None


def test_platform_headers_are_recorded_without_the_key(client: httpx.Client, emu: FalEmulator):
    headers = {
        "X-Fal-Runner-Hint": "sess-1",
        "X-Fal-No-Retry": "1",
        "X-Fal-Store-IO": "0",
        "X-Fal-Object-Lifecycle-Preference": '{"expiration_duration_seconds": 60}',
        "x-app-fal-disable-fallback": "true",
    }
    sub = submit(client, "emulator/echo", {"a": 1}, headers=headers)
    info = emu.request_info(sub["request_id"])
    assert info["options"]["runner_hint"] == "sess-1"
    assert info["options"]["no_retry"] == "1"
    assert info["options"]["store_io"] == "0"
    assert info["options"]["object_lifecycle_preference"] == '{"expiration_duration_seconds": 60}'
    assert info["options"]["disable_fallback"] == "true"
    assert info["arguments"] == {"a": 1}
    assert "authorization" not in {k.lower() for k in info["headers"]}
    assert emu.key and emu.key not in str(info)


def test_fail_app_kinds_complete_with_errors(client: httpx.Client):
    expectations = {
        "validation": (422, None, "false"),
        "runner": (503, "runner_disconnected", None),
        "server": (500, "runner_server_error", None),
    }
    for kind, (code, error_type, retryable) in expectations.items():
        sub = submit(client, "emulator/fail", {"kind": kind})
        status = wait_completed(client, sub["status_url"])
        assert status["error"]
        result = client.get(sub["response_url"])
        assert result.status_code == code
        if error_type:
            assert status["error_type"] == error_type
            assert result.headers["x-fal-error-type"] == error_type
            assert result.json()["error_type"] == error_type
        if retryable:
            assert result.headers["x-fal-retryable"] == retryable
            assert isinstance(result.json()["detail"], list)


def test_model_input_validation_is_a_422_detail_list(client: httpx.Client):
    sub = submit(client, "fal-ai/flux/schnell", {"num_images": 1})
    wait_completed(client, sub["status_url"])
    result = client.get(sub["response_url"])
    assert result.status_code == 422
    assert result.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert result.json()["detail"][0]["type"] == "missing"


def test_stats_count_calls(client: httpx.Client, emu: FalEmulator):
    sub = submit(client, "emulator/echo", {})
    wait_completed(client, sub["status_url"])
    client.get(sub["response_url"])
    stats = emu.stats()
    assert stats["submits"] == {"emulator/echo": 1}
    assert stats["status_calls"]["by_request"][sub["request_id"]] >= 1
    assert stats["result_calls"] == 1
    assert stats["requests"]["COMPLETED"] == 1
    emu.reset()
    assert emu.stats()["submits_total"] == 0


def test_namespaced_ids_keep_three_segments(client: httpx.Client, emu: FalEmulator):
    from fal_provider.emulator.apps import EchoApp, base_path

    class WorkflowEcho(EchoApp):
        app_id = "workflows/acme/pipeline"

    emu.app.state.registry.register(WorkflowEcho())
    sub = submit(client, "workflows/acme/pipeline/step", {"w": 1})
    assert sub["status_url"] == f"{emu.queue_url}/workflows/acme/pipeline/requests/{sub['request_id']}/status"
    wait_completed(client, sub["status_url"])
    assert client.get(sub["response_url"]).json() == {"w": 1}
    assert base_path("comfy/acme/flow/x") == "comfy/acme/flow"
    assert base_path("fal-ai/flux/dev") == "fal-ai/flux"
