"""Money for a batch: ``max_cost`` and named budgets checked item by item, before each POST.

Why not the single-request :class:`~fal_provider.operators.costing.CostGuard` as is: it keeps the
task's spend in ``task_state_store`` / a Variable, one read and one write per request, a record that
grows with the batch. A batch already has a durable per-item record, its journal: each ``intent``
carries the estimate reserved for that POST (``est``), so the spend of this task across all its
tries is the sum of the estimates in its journal (an attempt that may have been paid counts; the safe
direction), and no extra store is needed.

Per POST: the endpoint's estimate (fal's historical price per call, looked up once per endpoint and
batch) must fit ``max_cost`` minus what the journal already counts, and is reserved in the named
budget (one conditional UPDATE, :mod:`fal_provider.budgets`). The first refusal stops submission:
items already in flight finish, every input not yet sent is recorded ``not_submitted`` (retryable
in the journal, so a later try with a higher limit sends them), and the ratio rule decides the task.
At the end of the try, this try's reservations are settled as spent at their estimate in one call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fal_provider import budgets
from fal_provider.exceptions import FalBudgetExceeded, FalPermanentError
from fal_provider.hooks.platform import endpoint_of
from fal_provider.operators.lifecycle import CostSettings

log = logging.getLogger(__name__)


class BatchBudget:
    """The limits of one try of one batch task; ``spent`` starts at the journal's sum."""

    def __init__(self, settings: CostSettings, hook: Any, context: Any, *, spent: float) -> None:
        self.settings = settings
        self.hook = hook
        self.spent = spent
        self.reserved_here = 0.0
        self.key: str | None = None
        self.limit = 0.0
        #: Why submission stopped: a limit (``FalBudgetExceeded``) or, with ``strict_budget``, no price.
        self.stopped: FalPermanentError | None = None
        self._estimates: dict[str, float] = {}
        self._lookup: asyncio.Lock | None = None
        if settings.budget is not None:
            # Configuration mistakes fail here, before anything is sent.
            ti = context["ti"]
            self.limit = budgets.budget_limit(settings.budget, settings.budget_limit)
            budgets.database_url()
            scope = "" if settings.budget_scope == "global" else f"@{ti.dag_id}/{ti.run_id}"
            self.key = settings.budget + scope

    @property
    def limited(self) -> bool:
        return self.settings.limited

    async def _estimate(self, app_id: str, path: str) -> float:
        endpoint = endpoint_of(app_id, path)
        if endpoint in self._estimates:
            return self._estimates[endpoint]
        # One lookup per endpoint, not one per item of the first window (created on the loop).
        self._lookup = self._lookup or asyncio.Lock()
        async with self._lookup:
            return await self._look_up(endpoint)

    async def _look_up(self, endpoint: str) -> float:
        if self.stopped is not None:  # strict_budget refused while this item waited for the lock
            raise self.stopped
        if endpoint not in self._estimates:
            try:
                estimate = await asyncio.to_thread(
                    self.hook.estimate_cost, {endpoint: 1}, estimate_type="historical_api_price"
                )
                self._estimates[endpoint] = float(estimate.total_cost)
            except Exception as err:
                if self.settings.strict_budget:
                    self.stopped = FalPermanentError(
                        f"strict_budget: the cost of a request to {endpoint} cannot be estimated ({err}), "
                        "so the batch submits nothing more. Pass strict_budget=False to let unpriced "
                        "requests through."
                    )
                    raise self.stopped from None
                log.warning("No fal cost estimate for %s (%s); budget checks count it as 0", endpoint, err)
                self._estimates[endpoint] = 0.0
        return self._estimates[endpoint]

    def spent_so_far(self) -> float:
        """For the progress line: the estimates of every POST this task announced, all tries."""
        return self.spent

    def estimate_of(self, app_id: str, path: str) -> float | None:
        """The estimate already looked up for the endpoint (what a cached copy is said to save)."""
        return self._estimates.get(endpoint_of(app_id, path))

    async def reserve(self, app_id: str, path: str) -> float:
        """The estimate of one more POST, counted and reserved; raises ``FalBudgetExceeded`` (and
        remembers it in :attr:`stopped`) when it does not fit, or ``FalPermanentError`` when
        ``strict_budget`` and the endpoint has no price."""
        if self.stopped is not None:
            raise self.stopped
        needed = await self._estimate(app_id, path)
        max_cost = self.settings.max_cost
        if max_cost is not None and self.spent + needed > max_cost + budgets.EPSILON:
            self.stopped = budgets.budget_exceeded(
                "max_cost of this task", self.spent, 0.0, needed, max_cost, "raise max_cost on the task"
            )
            raise self.stopped
        if self.key is not None:
            try:
                await asyncio.to_thread(budgets.ledger().reserve, self.key, needed, self.limit)
            except FalBudgetExceeded as err:
                self.stopped = err
                raise
            self.reserved_here += needed
        # Counted before the await of the POST: the window's other items see it at once.
        self.spent += needed
        return needed

    def settle(self) -> None:
        """End of the try: this try's reservations become spent at their estimate (one call)."""
        if self.key is not None and self.reserved_here:
            budgets.ledger().settle(self.key, self.reserved_here, self.reserved_here)
            self.reserved_here = 0.0
