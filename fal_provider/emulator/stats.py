"""Counters that tests read through ``/_emulator/stats`` to prove what a client actually did."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Stats:
    """Plain counters; the emulator runs on one event loop so no locking is needed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.submits: Counter[str] = Counter()
        self.status_calls: Counter[str] = Counter()
        self.status_calls_total = 0
        self.counters: Counter[str] = Counter()
        self.webhooks: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def status_call(self, request_id: str) -> None:
        self.status_calls_total += 1
        self.status_calls[request_id] += 1

    def snapshot(self, requests_by_state: dict[str, int]) -> dict[str, Any]:
        names = (
            "status_stream_calls",
            "result_calls",
            "cancels",
            "runs",
            "stream_calls",
            "realtime_sessions",
            "realtime_messages",
            "uploads",
            "tokens",
            "expired_results",
            "platform_calls",
        )
        data: dict[str, Any] = {name: self.counters.get(name, 0) for name in names}
        data["submits"] = dict(self.submits)
        data["submits_total"] = sum(self.submits.values())
        data["status_calls"] = {"total": self.status_calls_total, "by_request": dict(self.status_calls)}
        data["webhook_deliveries"] = {
            key: self.webhooks.get(key, 0)
            for key in ("attempts", "successes", "failures", "dropped", "duplicated")
        }
        data["faults_injected"] = dict(self.faults)
        data["requests"] = requests_by_state
        return data
