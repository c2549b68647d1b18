"""The usage ledger's tables: one row per authenticated request, and a daily roll-up.

``usage_ledger`` is the audit trail (never prompt or completion text). ``usage_daily`` holds the
same numbers summed per UTC day, team, key, route, deployment and status; the writer maintains it
in the transaction that inserts the rows, so reports over months read a few thousand roll-up
rows instead of millions of ledger rows. The SQL views users query (``team_spend_daily``,
``model_spend_daily``, ``key_spend_daily``, ``slo_daily``) are created by migration 0002.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, UtcDateTime

__all__ = ["COST", "COST_SUM", "LIMITS", "TAGS", "UsageDaily", "UsageLedger"]

# Dollars with 10 decimal places: a million-token request at $0.01/Mtok is still exact, and a
# single request can cost up to $10^10. Sums get more integer digits.
COST = Numeric(20, 10)
COST_SUM = Numeric(28, 10)
# JSONB on Postgres (indexable, compact); JSON text elsewhere. An absent tag set is SQL NULL.
TAGS = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")

# Column widths; ``rows.py`` truncates client-supplied strings to them so an insert never fails
# on length (a failed insert would hold up the batch behind it).
LIMITS = {
    "request_id": 128,
    "team": 128,
    "key_id": 64,
    "route": 128,
    "requested_model": 256,
    "deployment": 128,
    "provider": 128,
    "replica": 256,
    "status": 32,
    "error_type": 64,
    "end_user": 256,
    "client_request_id": 128,
}


def _text(name: str) -> Any:
    return String(LIMITS[name])


class UsageLedger(Base):
    """One row per authenticated request: who, what, which deployment, tokens, dollars, timing."""

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_ledger_team_ts", "team", "ts"),
        Index("ix_usage_ledger_key_id_ts", "key_id", "ts"),
    )

    # The x-request-id the client saw; the key inserts are idempotent on.
    request_id: Mapped[str] = mapped_column(_text("request_id"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime())  # when the request arrived
    team: Mapped[str] = mapped_column(_text("team"))
    key_id: Mapped[str | None] = mapped_column(_text("key_id"))
    route: Mapped[str | None] = mapped_column(_text("route"))
    requested_model: Mapped[str | None] = mapped_column(_text("requested_model"))
    deployment: Mapped[str | None] = mapped_column(_text("deployment"))
    provider: Mapped[str | None] = mapped_column(_text("provider"))
    replica: Mapped[str | None] = mapped_column(_text("replica"))
    status: Mapped[str] = mapped_column(_text("status"))
    http_status: Mapped[int] = mapped_column(SmallInteger)
    error_type: Mapped[str | None] = mapped_column(_text("error_type"))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[Decimal] = mapped_column(COST)
    cost_saved_usd: Mapped[Decimal] = mapped_column(COST)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(SmallInteger)
    stream: Mapped[bool] = mapped_column(Boolean)
    end_user: Mapped[str | None] = mapped_column(_text("end_user"))
    tags: Mapped[dict[str, str] | None] = mapped_column(TAGS)
    # Whether the request met its route's latency target; NULL when the route has none.
    slo_met: Mapped[bool | None] = mapped_column(Boolean)
    client_request_id: Mapped[str | None] = mapped_column(_text("client_request_id"))


class UsageDaily(Base):
    """Ledger sums per (team, UTC day, key, route, deployment, status).

    Missing dimensions are stored as ``''`` rather than NULL, because NULLs never conflict in a
    unique key and the writer's upsert relies on conflicts.
    """

    __tablename__ = "usage_daily"

    # Team first: reports filter on one team and a range of days.
    team: Mapped[str] = mapped_column(_text("team"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    key_id: Mapped[str] = mapped_column(_text("key_id"), primary_key=True)
    route: Mapped[str] = mapped_column(_text("route"), primary_key=True)
    deployment: Mapped[str] = mapped_column(_text("deployment"), primary_key=True)
    status: Mapped[str] = mapped_column(_text("status"), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal] = mapped_column(COST_SUM)
    cost_saved_usd: Mapped[Decimal] = mapped_column(COST_SUM)
