"""Spend reports: what a team (or everyone) spent over a range of UTC days, grouped one way.

Grouping by day, model (deployment), key, route or status reads the daily roll-up
(``usage_daily``), so a report over months touches one row per day and group, never the ledger
rows. Grouping by tag reads the ledger rows of the range (through the team + time index), since
tags are free-form. ``window_sums`` reads ledger rows for an exact time window, for
``tollgate reconcile``.

Dollar amounts are :class:`~decimal.Decimal`. On Postgres they are exact; SQLite stores and sums
them as doubles (exact to far below a cent for any realistic total, not to the 10th decimal).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Select,
    String,
    Table,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.base import UtcDateTime
from gateway.ledger.models import COST_SUM, UsageDaily, UsageLedger

__all__ = ["GROUPINGS", "SpendQueries", "SpendReport", "SpendRow", "WindowSums"]

_LEDGER: Table = UsageLedger.__table__  # type: ignore[assignment]
_DAILY: Table = UsageDaily.__table__  # type: ignore[assignment]

# --by value -> the roll-up column it groups on (tag is answered from the ledger rows).
_ROLLUP_GROUPS = {
    "day": "day",
    "model": "deployment",
    "key": "key_id",
    "route": "route",
    "status": "status",
}
GROUPINGS = (*_ROLLUP_GROUPS, "tag")
NONE_LABEL = "(none)"
UNTAGGED = "(untagged)"

_TAG_PAIRS = {
    "postgresql": """
SELECT COALESCE(t.key || '=' || t.value, '{untagged}') AS grp, {sums}
FROM usage_ledger AS u LEFT JOIN LATERAL jsonb_each_text(u.tags) AS t(key, value) ON true
WHERE u.ts >= :start AND u.ts < :end{team}
GROUP BY 1""",
    "sqlite": """
SELECT COALESCE(t.key || '=' || t.value, '{untagged}') AS grp, {sums}
FROM usage_ledger AS u LEFT JOIN json_each(u.tags) AS t
WHERE u.ts >= :start AND u.ts < :end{team}
GROUP BY 1""",
}
_RAW_SUMS = (
    "COUNT(*) AS requests, SUM(u.prompt_tokens) AS prompt_tokens, "
    "SUM(u.completion_tokens) AS completion_tokens, SUM(u.cached_tokens) AS cached_tokens, "
    "SUM(u.cost_usd) AS cost_usd, SUM(u.cost_saved_usd) AS cost_saved_usd"
)


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One group's sums (``group`` is a day in ISO form, a name, or ``key=value`` for tags)."""

    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    cost_saved_usd: Decimal

    def as_dict(self, label: str = "group") -> dict[str, Any]:
        """Plain values for output; dollars as strings so JSON keeps every digit."""
        return {
            label: self.group,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": format_usd(self.cost_usd),
            "cost_saved_usd": format_usd(self.cost_saved_usd),
        }


@dataclass(frozen=True, slots=True)
class SpendReport:
    """Rows for one grouping, and the total over the whole range.

    For ``by="tag"`` without a tag key, a request with several tags counts under each of them,
    so the rows may add up to more than ``total`` (which counts each request once).
    """

    team: str | None
    since: date
    until: date
    by: str
    tag_key: str | None
    rows: list[SpendRow]
    total: SpendRow

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (for the CLI and the HTTP endpoints)."""
        label = self.tag_key if self.by == "tag" and self.tag_key else self.by
        return {
            "team": self.team,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "by": self.by,
            "tag_key": self.tag_key,
            "rows": [row.as_dict(label) for row in self.rows],
            "total": self.total.as_dict(label),
        }


class WindowSums(NamedTuple):
    """Ledger sums over a time window: tokens (prompt + completion) and dollars."""

    tokens: int
    usd: Decimal


class SpendQueries:
    """Read-only spend queries over an engine whose database is migrated to 0002 or later."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def spend(
        self,
        *,
        team: str | None,
        since: date,
        until: date,
        by: str = "day",
        tag_key: str | None = None,
    ) -> SpendReport:
        """Spend from ``since`` to ``until`` (UTC days, both included), grouped ``by``.

        ``team=None`` reports every team (admins only: the per-team endpoint must always pass
        the caller's own team). ``by`` is one of :data:`GROUPINGS`; with ``by="tag"``,
        ``tag_key`` groups by that tag's value, else by every ``key=value`` pair.
        """
        if by not in GROUPINGS:
            raise ValueError(f"cannot group spend by {by!r}; use one of {', '.join(GROUPINGS)}")
        if until < since:
            raise ValueError(f"the range ends ({until}) before it starts ({since})")
        async with self._engine.connect() as conn:
            total_row = (await conn.execute(self._rollup(team, since, until, None))).one()
            if by == "tag":
                query = self._by_tag(conn.dialect.name, team, since, until, tag_key)
            else:
                query = self._rollup(team, since, until, _ROLLUP_GROUPS[by])
            found = (await conn.execute(query)).all()
        rows = [_spend_row(_label(values[0], by), values[1:]) for values in found]
        if by == "day":
            rows.sort(key=lambda row: row.group)
        else:
            rows.sort(key=lambda row: (-row.cost_usd, -row.requests, row.group))
        return SpendReport(team, since, until, by, tag_key, rows, _spend_row("total", total_row))

    async def window_sums(
        self,
        team: str,
        key_id: str | None,
        start: datetime,
        end: datetime,
        *,
        statuses: Collection[str] | None = None,
    ) -> WindowSums:
        """Tokens and dollars the ledger holds for ``team`` (and ``key_id``) in [start, end).

        ``statuses`` restricts the sum to those outcomes (e.g. leave out refusals the budget
        never charged); ``None`` sums every row.
        """
        ledger = _LEDGER.c
        query = select(
            func.coalesce(func.sum(ledger.prompt_tokens + ledger.completion_tokens), 0),
            func.coalesce(func.sum(ledger.cost_usd), 0),
        ).where(ledger.team == team, ledger.ts >= start, ledger.ts < end)
        if key_id is not None:
            query = query.where(ledger.key_id == key_id)
        if statuses is not None:
            query = query.where(ledger.status.in_(list(statuses)))
        async with self._engine.connect() as conn:
            tokens, usd = (await conn.execute(query)).one()
        return WindowSums(int(tokens), _decimal(usd))

    @staticmethod
    def _rollup(team: str | None, since: date, until: date, column: str | None) -> Select[Any]:
        daily = _DAILY.c
        sums: list[ColumnElement[Any]] = [
            func.sum(daily.requests),
            func.sum(daily.prompt_tokens),
            func.sum(daily.completion_tokens),
            func.sum(daily.cached_tokens),
            func.sum(daily.cost_usd),
            func.sum(daily.cost_saved_usd),
        ]
        if column is None:
            query = select(*sums)
        else:
            query = select(daily[column], *sums).group_by(daily[column])
        query = query.where(daily.day >= since, daily.day <= until)
        if team is not None:
            query = query.where(daily.team == team)
        return query

    @staticmethod
    def _by_tag(
        dialect: str, team: str | None, since: date, until: date, tag_key: str | None
    ) -> Any:
        start, end = _day_start(since), _day_start(until + timedelta(days=1))
        if tag_key is not None:
            ledger = _LEDGER.c
            value = ledger.tags[tag_key].as_string()
            query = (
                select(
                    value,
                    func.count(),
                    func.sum(ledger.prompt_tokens),
                    func.sum(ledger.completion_tokens),
                    func.sum(ledger.cached_tokens),
                    func.sum(ledger.cost_usd),
                    func.sum(ledger.cost_saved_usd),
                )
                .where(ledger.ts >= start, ledger.ts < end)
                .group_by(value)  # NULL (no such tag) is labelled in Python
            )
            return query if team is None else query.where(ledger.team == team)
        if dialect not in _TAG_PAIRS:
            raise ValueError(f"spend by tag supports Postgres and SQLite, not {dialect}")
        sql = _TAG_PAIRS[dialect].format(
            untagged=UNTAGGED, sums=_RAW_SUMS, team="" if team is None else " AND u.team = :team"
        )
        params: list[BindParameter[Any]] = [
            bindparam("start", start, UtcDateTime()),
            bindparam("end", end, UtcDateTime()),
        ]
        if team is not None:
            params.append(bindparam("team", team, String()))
        return (
            text(sql)
            .bindparams(*params)
            .columns(
                grp=String(),
                requests=BigInteger(),
                prompt_tokens=BigInteger(),
                completion_tokens=BigInteger(),
                cached_tokens=BigInteger(),
                cost_usd=COST_SUM,
                cost_saved_usd=COST_SUM,
            )
        )


def format_usd(amount: Decimal) -> str:
    """Dollars without trailing zeros beyond the cents: ``1.5`` -> ``1.50``, exact otherwise."""
    text_form = f"{amount:.10f}".rstrip("0")
    whole, _, fraction = text_form.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def _spend_row(group: str, values: Any) -> SpendRow:
    requests, prompt, completion, cached, cost, saved = values
    return SpendRow(
        group=group,
        requests=int(requests or 0),
        prompt_tokens=int(prompt or 0),
        completion_tokens=int(completion or 0),
        cached_tokens=int(cached or 0),
        cost_usd=_decimal(cost),
        cost_saved_usd=_decimal(saved),
    )


def _label(value: Any, by: str) -> str:
    if isinstance(value, date):
        return value.isoformat()
    if value is None or value == "":
        return UNTAGGED if by == "tag" else NONE_LABEL
    return str(value)


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    # A SQLite sum comes back as a double: round it to the column's scale.
    return round(Decimal(repr(float(value))), 10)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)
