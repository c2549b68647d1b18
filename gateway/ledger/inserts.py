"""One idempotent batch insert: the ledger rows and their daily roll-up, in one transaction.

Only the rows actually inserted are rolled up (``ON CONFLICT (request_id) DO NOTHING RETURNING``),
so inserting a batch the database already has (a replay, a retry after a lost commit
acknowledgement) changes nothing. A batch is a list of spooled JSON lines.

* **Postgres**: one statement per batch, and next to no Python per row. The lines are joined
  into one JSON array and sent as a single parameter; Postgres parses it
  (``jsonb_to_recordset``), checks and clips the values, inserts the rows and upserts the roll-up
  from what the insert returned (a data-modifying CTE), doing the exact decimal sums itself::

      WITH incoming AS (SELECT * FROM jsonb_to_recordset($1) AS t(request_id text, ...)),
           inserted AS (INSERT INTO usage_ledger SELECT ... FROM incoming
                        ON CONFLICT (request_id) DO NOTHING RETURNING ...),
           rolled   AS (INSERT INTO usage_daily SELECT ..., count(*), sum(...) FROM inserted
                        GROUP BY ... ON CONFLICT (...) DO UPDATE SET requests = ... + ...)
      SELECT count(*) FROM inserted

  Building a 500-row VALUES statement through SQLAlchemy instead costs tens of microseconds of
  Python per row, on the event loop that serves requests.
* **SQLite** (the embedded default): each line is parsed and checked in Python
  (:func:`~gateway.ledger.rows.to_params`), inserted with a multi-row
  ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, and the roll-up upsert computed in Python.

A batch holding a row the database refuses raises :class:`Unwritable`; the writer splits the
batch to find that row and sets it aside.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Table, TextClause, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from gateway.ledger.models import LIMITS, UsageDaily, UsageLedger
from gateway.ledger.rows import COLUMNS, day_of, to_params

__all__ = ["LedgerInserts", "Unwritable", "refused_for_content", "roll_up"]

_LEDGER: Table = UsageLedger.__table__  # type: ignore[assignment]
_DAILY: Table = UsageDaily.__table__  # type: ignore[assignment]
_DAILY_KEY = ("team", "day", "key_id", "route", "deployment", "status")
_DAILY_SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_saved_usd",
)

# How each JSON field is read (text unless listed) and what goes into the column.
_JSON_TYPES = {
    "ts": "float8",
    "http_status": "int4",
    "prompt_tokens": "int4",
    "completion_tokens": "int4",
    "cached_tokens": "int4",
    "cost_usd": "numeric",
    "cost_saved_usd": "numeric",
    "ttft_ms": "float8",
    "total_ms": "float8",
    "attempts": "int4",
    "stream": "bool",
    "tags": "jsonb",
    "slo_met": "bool",
}
_ZERO_IF_MISSING = ("http_status", "prompt_tokens", "completion_tokens", "cached_tokens")


def _column_value(column: str) -> str:
    if column in ("request_id", "team"):  # required: '' becomes NULL, refused by NOT NULL
        return f"NULLIF(left({column}, {LIMITS[column]}), '')"
    if column == "status":
        return f"COALESCE(left(status, {LIMITS['status']}), 'ok')"
    if column in LIMITS:
        return f"left({column}, {LIMITS[column]})"
    if column in (*_ZERO_IF_MISSING, "attempts", "cost_usd", "cost_saved_usd"):
        return f"COALESCE({column}, 0)"
    return {
        "ts": "to_timestamp(ts)",
        "stream": "COALESCE(stream, false)",
        "tags": "NULLIF(tags, CAST('{}' AS jsonb))",
    }.get(column, column)


def _postgres_sql() -> str:
    fields = ", ".join(f"{c} {_JSON_TYPES.get(c, 'text')}" for c in COLUMNS)
    values = ", ".join(_column_value(c) for c in COLUMNS)
    key = ", ".join(_DAILY_KEY)
    updates = ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in _DAILY_SUMS)
    return f"""
WITH incoming AS (
    SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS t({fields})
), inserted AS (
    INSERT INTO usage_ledger ({", ".join(COLUMNS)})
    SELECT {values} FROM incoming
    ON CONFLICT (request_id) DO NOTHING
    RETURNING team, ts, key_id, route, deployment, status,
        prompt_tokens, completion_tokens, cached_tokens, cost_usd, cost_saved_usd
), rolled AS (
    INSERT INTO usage_daily ({key}, {", ".join(_DAILY_SUMS)})
    SELECT team, CAST(ts AT TIME ZONE 'UTC' AS date), COALESCE(key_id, ''), COALESCE(route, ''),
        COALESCE(deployment, ''), status, count(*), sum(prompt_tokens), sum(completion_tokens),
        sum(cached_tokens), sum(cost_usd), sum(cost_saved_usd)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT ({key}) DO UPDATE SET {updates}
)
SELECT count(*) FROM inserted"""


class Unwritable(Exception):
    """The database refused these rows for their values (not for an outage): retrying is futile."""


class LedgerInserts:
    """Batch inserts for ``engine``'s dialect (statements built once)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"the ledger supports Postgres and SQLite, not {dialect}")
        self._postgres: TextClause | None = None
        self._sqlite: tuple[Insert, Insert] | None = None
        if dialect == "postgresql":
            self._postgres = text(_postgres_sql())
        else:
            self._sqlite = _sqlite_statements()

    async def insert(self, lines: list[bytes]) -> int:
        """Insert the rows spooled as ``lines`` (JSON objects); how many were new.

        Raises :class:`Unwritable` when the database (or, on SQLite, the check in Python)
        refuses a row's content; anything else (a lost connection, a server shutting down, a
        missing table) is an outage to retry.
        """
        if not lines:
            return 0
        try:
            if self._postgres is not None:
                return await self._insert_postgres(self._postgres, lines)
            assert self._sqlite is not None
            return await self._insert_sqlite(*self._sqlite, lines)
        except StatementError as exc:
            if refused_for_content(exc):
                raise Unwritable(str(exc.orig or exc)) from exc
            raise

    async def _insert_postgres(self, statement: TextClause, lines: list[bytes]) -> int:
        batch = b"[" + b",".join(lines) + b"]"
        async with self._engine.begin() as conn:
            inserted = (await conn.execute(statement, {"batch": batch.decode()})).scalar_one()
        return int(inserted)

    async def _insert_sqlite(
        self, insert_rows: Insert, upsert_daily: Insert, lines: list[bytes]
    ) -> int:
        params: dict[str, dict[str, Any]] = {}
        for line in lines:
            try:
                row = to_params(orjson.loads(line))
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
                raise Unwritable(f"not a ledger row: {exc}") from exc
            # The first of duplicate ids wins, as on Postgres; the roll-up must see it once.
            params.setdefault(row["request_id"], row)
        rows = list(params.values())
        async with self._engine.begin() as conn:
            result = await conn.execute(insert_rows, rows)
            inserted = {row_id for (row_id,) in result}
            if inserted:
                daily = roll_up(row for row in rows if row["request_id"] in inserted)
                await conn.execute(upsert_daily, daily)
        return len(inserted)


def roll_up(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sums per roll-up key of rows from :func:`~gateway.ledger.rows.to_params`, in key order
    (so concurrent writers lock roll-up rows in the same order)."""
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (
            row["team"],
            day_of(row),
            row["key_id"] or "",
            row["route"] or "",
            row["deployment"] or "",
            row["status"],
        )
        entry = sums.get(key)
        if entry is None:
            entry = sums[key] = dict(zip(_DAILY_KEY, key, strict=True))
            entry.update(requests=0, prompt_tokens=0, completion_tokens=0, cached_tokens=0)
            entry.update(cost_usd=0, cost_saved_usd=0)
        entry["requests"] += 1
        entry["prompt_tokens"] += row["prompt_tokens"]
        entry["completion_tokens"] += row["completion_tokens"]
        entry["cached_tokens"] += row["cached_tokens"]
        entry["cost_usd"] += row["cost_usd"]
        entry["cost_saved_usd"] += row["cost_saved_usd"]
    return [sums[key] for key in sorted(sums)]


def refused_for_content(exc: StatementError) -> bool:
    """Whether the database refused the rows for their values (retrying cannot help)."""
    if isinstance(exc, (DataError, IntegrityError)) or not isinstance(exc, DBAPIError):
        return True  # not a DBAPIError: a value that would not even bind
    # SQLSTATE class 22 (data exception) or 23 (integrity violation), where the driver says.
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(code, str) and code[:2] in ("22", "23"):
        return True
    # asyncpg refuses some values client-side (an int out of int16 range) with a ValueError.
    cause: BaseException | None = exc.orig
    while cause is not None:
        if isinstance(cause, (ValueError, TypeError, OverflowError)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _sqlite_statements() -> tuple[Insert, Insert]:
    rows, daily = sqlite.insert(_LEDGER), sqlite.insert(_DAILY)
    insert_rows = rows.on_conflict_do_nothing(index_elements=["request_id"])
    upsert_daily = daily.on_conflict_do_update(
        index_elements=list(_DAILY_KEY),
        set_={name: _DAILY.c[name] + daily.excluded[name] for name in _DAILY_SUMS},
    )
    # RETURNING reports only the rows actually inserted: those, and only those, roll up.
    return insert_rows.returning(_LEDGER.c.request_id), upsert_daily
