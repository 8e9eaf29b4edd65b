"""Named budgets shared by many tasks: a running total that two tasks cannot both overrun.

Why a database of the provider's own, reached directly: a shared limit needs an atomic
"reserve if it still fits", and Airflow 3 gives task code none. The Execution API's Variables and
XComs are last-write-wins (two tasks reading "spent 4 of 5" would both add 1), and Airflow 3
deliberately blocks task processes from its metadata database (the supervisor replaces
``[database] sql_alchemy_conn`` with ``airflow-db-not-allowed:///``). So the ledger lives in one
small table, ``fal_provider_budget``, on the SQLAlchemy URL in ``[fal] budget_database_url``: a
database (or schema) for it, or the metadata database itself when the operator deployment allows
workers to reach it (the table is the provider's own, beside Airflow's, never touching them).

Each reservation is one conditional ``UPDATE ... SET reserved = reserved + :amount WHERE name =
:name AND spent + reserved + :amount <= :limit``: the database serialises concurrent updates of the
row (PostgreSQL row lock, SQLite's write lock), so of ten tasks racing for a limit that fits four,
exactly four rows are updated. After the result, :meth:`BudgetLedger.settle` swaps the reservation
for the actual cost; a submit that never happened releases it. A try that dies in between leaves its
reservation counted: the safe direction (it may have been paid for), logged in the task, and the
retry that reattaches settles it (the reserved amount is kept with the request).

Limits come from the operator (``budget_limit=``) or from ``[fal] budgets``, a JSON object of
name -> limit (``AIRFLOW__FAL__BUDGETS='{"nightly": 5}'``); the limit given last is stored with the
row for reporting, and every check uses the caller's limit, so raising it takes effect at once.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from fal_provider.exceptions import FalBudgetExceeded, FalInputError

__all__ = ["BudgetLedger", "BudgetState", "budget_limit", "ledger"]

TABLE = "fal_provider_budget"
#: Float sums of prices like 0.0001 are not exact; a reservation that fits to this much fits.
EPSILON = 1e-9


@dataclass(frozen=True)
class BudgetState:
    name: str
    spent: float
    reserved: float
    limit: float | None


def budget_limit(name: str, given: float | None) -> float:
    """The limit of budget ``name``: ``given`` (``budget_limit=``) or ``[fal] budgets``."""
    if given is not None:
        return given
    from airflow.configuration import conf

    raw = conf.get("fal", "budgets", fallback=None)
    limits: Any = {}
    if raw:
        try:
            limits = json.loads(raw)
        except ValueError:
            raise FalInputError(
                '[fal] budgets must be a JSON object of budget name -> limit, e.g. {"nightly": 5}'
            ) from None
    value = limits.get(name) if isinstance(limits, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FalInputError(
            f"Budget {name!r} has no limit: pass budget_limit= or set [fal] budgets, e.g. "
            f"AIRFLOW__FAL__BUDGETS='{{\"{name}\": 5}}' (USD); nothing was submitted."
        )
    return float(value)


def database_url() -> str:
    from airflow.configuration import conf

    url = conf.get("fal", "budget_database_url", fallback=None)
    if not url:
        raise FalInputError(
            "A named budget needs [fal] budget_database_url (AIRFLOW__FAL__BUDGET_DATABASE_URL), the "
            "SQLAlchemy URL of the database that keeps the running totals (it may be the metadata "
            "database); nothing was submitted."
        )
    return str(url)


class BudgetLedger:
    """Reserve, settle and release amounts of named budgets in ``fal_provider_budget``."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self._engine = sa.create_engine(url, pool_pre_ping=True)
        metadata = sa.MetaData()
        self._table = sa.Table(
            TABLE,
            metadata,
            sa.Column("name", sa.String(250), primary_key=True),
            sa.Column("spent", sa.Float, nullable=False, default=0.0),
            sa.Column("reserved", sa.Float, nullable=False, default=0.0),
            sa.Column("limit_amount", sa.Float, nullable=True),
        )
        try:
            metadata.create_all(self._engine, checkfirst=True)
        except sa.exc.DBAPIError:
            # Another task created the table between the check and the CREATE (PostgreSQL reports
            # the duplicate type as IntegrityError/ProgrammingError): it exists now, which is all we need.
            metadata.create_all(self._engine, checkfirst=True)

    def _ensure_row(self, conn: Any, name: str) -> None:
        import sqlalchemy as sa

        if conn.execute(sa.select(self._table.c.name).where(self._table.c.name == name)).first():
            return
        try:
            with conn.begin_nested():
                conn.execute(self._table.insert().values(name=name, spent=0.0, reserved=0.0))
        except sa.exc.IntegrityError:
            pass  # another task created it first

    def reserve(self, name: str, amount: float, limit: float) -> BudgetState:
        """Add ``amount`` to the reservations if spent + reserved + amount fits ``limit``; else raise
        :class:`FalBudgetExceeded` with the state that refused it."""
        table = self._table
        with self._engine.begin() as conn:
            self._ensure_row(conn, name)
            fits = (table.c.spent + table.c.reserved + amount) <= (limit + EPSILON)
            done = conn.execute(
                table.update()
                .where(table.c.name == name, fits)
                .values(reserved=table.c.reserved + amount, limit_amount=limit)
            )
            state = self._state(conn, name)
        if done.rowcount != 1:
            raise budget_exceeded(
                f"budget {name!r}", state.spent, state.reserved, amount, limit, _raise_hint(name)
            )
        return state

    def settle(self, name: str, reserved: float, actual: float) -> BudgetState:
        """Replace a reservation of ``reserved`` by the ``actual`` cost (``0`` releases it)."""
        table = self._table
        with self._engine.begin() as conn:
            self._ensure_row(conn, name)
            conn.execute(
                table.update()
                .where(table.c.name == name)
                .values(reserved=table.c.reserved - reserved, spent=table.c.spent + actual)
            )
            return self._state(conn, name)

    def state(self, name: str) -> BudgetState:
        with self._engine.begin() as conn:
            return self._state(conn, name)

    def _state(self, conn: Any, name: str) -> BudgetState:
        import sqlalchemy as sa

        t = self._table
        row = conn.execute(
            sa.select(t.c.spent, t.c.reserved, t.c.limit_amount).where(t.c.name == name)
        ).first()
        if row is None:
            return BudgetState(name, 0.0, 0.0, None)
        return BudgetState(name, float(row[0]), max(0.0, float(row[1])), row[2])


def _raise_hint(name: str) -> str:
    return (
        f"raise it with budget_limit= on the task or in [fal] budgets (AIRFLOW__FAL__BUDGETS='{{\"{name}\": ...}}'), "
        f"or reset the spend of {name!r} in table {TABLE}"
    )


def budget_exceeded(
    what: str, spent: float, reserved: float, needed: float, limit: float, hint: str
) -> FalBudgetExceeded:
    """The refusal, worded the same for ``max_cost`` and named budgets."""
    message = (
        f"fal {what} exceeded: spent {spent:.10g} USD, reserved {reserved:.10g} USD by requests in flight, "
        f"this request needs ~{needed:.10g} USD, limit {limit:.10g} USD; nothing was submitted. To spend more, "
        f"{hint}."
    )
    return FalBudgetExceeded(message, spent=spent, reserved=reserved, limit=limit, budget=what)


_LEDGERS: dict[str, BudgetLedger] = {}
_LOCK = threading.Lock()


def ledger(url: str | None = None) -> BudgetLedger:
    """The process' ledger for ``url`` (default ``[fal] budget_database_url``), created once."""
    url = url or database_url()
    with _LOCK:
        if url not in _LEDGERS:
            _LEDGERS[url] = BudgetLedger(url)
        return _LEDGERS[url]
