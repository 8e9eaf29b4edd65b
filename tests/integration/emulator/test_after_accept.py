"""``after_accept`` faults: the call does its work (queued, served, cancelled), then the answer is lost."""

from __future__ import annotations

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from tests.integration.emulator.helpers import submit, wait_completed, wait_for


def _only_request(emu: FalEmulator) -> dict[str, object]:
    listed = httpx.get(f"{emu.base_url}/_emulator/requests").json()["requests"]
    assert len(listed) == 1, listed
    return dict(listed[0])


def test_lost_submit_by_dropped_connection_is_still_queued_and_runs(client: httpx.Client, emu: FalEmulator):
    emu.set_faults(kind="after_accept", count=1, endpoints=["submit"])
    with pytest.raises(httpx.TransportError):
        client.post("/queue/emulator/echo", json={"lost": True})
    stats = emu.stats()
    assert stats["submits_total"] == 1
    assert stats["faults_injected"] == {"after_accept": 1}
    orphan = _only_request(emu)
    info = wait_for(lambda: (i := emu.request_info(str(orphan["request_id"])))["state"] == "COMPLETED" and i)
    assert info["arguments"] == {"lost": True} and info["result_status_code"] == 200
    assert submit(client, "emulator/echo", {})["status"] == "IN_QUEUE"  # the rule is used up


@pytest.mark.parametrize("code", ["502", "504"])
def test_lost_submit_by_gateway_page_is_still_queued(client: httpx.Client, emu: FalEmulator, code: str):
    emu.set_faults(kind="after_accept", answer=code, count=1, endpoints=["submit"])
    response = client.post("/queue/emulator/echo", json={})
    assert response.status_code == int(code)
    assert "nginx" in response.text and "x-fal-request-id" not in response.headers
    assert emu.stats()["submits_total"] == 1
    assert _only_request(emu)["app_id"] == "emulator/echo"


def test_lost_result_is_served_and_counted(client: httpx.Client, emu: FalEmulator):
    queued = submit(client, "emulator/echo", {"v": 1})
    wait_completed(client, queued["status_url"])
    emu.set_faults(kind="after_accept", count=1, endpoints=["result"])
    with pytest.raises(httpx.TransportError):
        client.get(queued["response_url"])
    assert emu.stats()["result_calls"] == 1
    assert client.get(queued["response_url"]).json() == {"v": 1}
    assert emu.stats()["result_calls"] == 2


def test_lost_cancel_is_applied(client: httpx.Client, emu: FalEmulator):
    queued = submit(client, "emulator/echo", {"duration_s": 30})
    emu.set_faults(kind="after_accept", answer="502", count=1, endpoints=["cancel"])
    assert client.put(queued["cancel_url"]).status_code == 502
    status = client.get(queued["status_url"]).json()
    assert (status["status"], status["error_type"]) == ("COMPLETED", "client_cancelled")
    again = client.put(queued["cancel_url"])
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
    assert emu.stats()["cancels"] == 2


def test_selection_by_app_and_seeded_rate(client: httpx.Client, emu: FalEmulator):
    emu.set_faults(
        {
            "seed": 3,
            "rules": [{"kind": "after_accept", "answer": "502", "rate": 1.0, "apps": ["emulator/fail"]}],
        }
    )
    assert client.post("/queue/emulator/echo", json={}).status_code == 200
    assert client.post("/queue/emulator/fail", json={}).status_code == 502
    assert emu.stats()["submits"] == {"emulator/echo": 1, "emulator/fail": 1}
    emu.set_faults({"seed": 3, "rules": [{"kind": "after_accept", "answer": "502", "rate": 0.5}]})
    first = [client.post("/run/emulator/echo", json={}).status_code for _ in range(12)]
    emu.set_faults({"seed": 3, "rules": [{"kind": "after_accept", "answer": "502", "rate": 0.5}]})
    second = [client.post("/run/emulator/echo", json={}).status_code for _ in range(12)]
    assert first == second and {200, 502} == set(first)
    assert emu.stats()["runs"] == 24  # every call ran, lost answers included


def test_answer_is_only_for_after_accept(emu: FalEmulator):
    refused = httpx.post(f"{emu.base_url}/_emulator/faults", json={"kind": "drop", "answer": "502"})
    assert refused.status_code == 400
    assert "after_accept" in refused.json()["detail"]
    shown = emu.set_faults(kind="after_accept", answer="504", count=2)
    assert (shown["rules"][0]["answer"], shown["rules"][0]["count"]) == ("504", 2)
    assert "answer" not in emu.set_faults(kind="drop", count=1)["rules"][0]


def test_a_held_submit_answer_is_queued_and_counted_before_it_arrives(client: httpx.Client, emu: FalEmulator):
    """``answer="late"`` with ``delay_s``: the window in which a client dies between POST and answer."""
    import threading
    import time

    emu.set_faults(kind="after_accept", answer="late", delay_s=1.5, count=1, endpoints=["submit"])
    answers: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: answers.append(client.post("/queue/emulator/echo", json={"v": 1}))
    )
    started = time.monotonic()
    sender.start()
    wait_for(lambda: emu.stats()["submits_total"] == 1)
    assert not answers, "the answer should still be held back"
    sender.join(timeout=30)
    assert time.monotonic() - started >= 1.5
    (response,) = answers
    assert response.status_code == 200 and response.json()["request_id"] == _only_request(emu)["request_id"]
