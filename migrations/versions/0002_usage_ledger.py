"""The usage ledger, its daily roll-up, and the spend views finance queries.

Views (all days are UTC days):

* ``team_spend_daily``   day, team, requests, tokens, cost_usd, cost_saved_usd
* ``model_spend_daily``  the same per team and deployment (the key under ``models:``)
* ``key_spend_daily``    the same per team and API key
* ``slo_daily``          per route: requests, goodput, p50/p95 time to first token

The spend views read ``usage_daily`` (the roll-up the writer maintains), so they stay fast over
months. ``slo_daily`` reads the ledger rows, since percentiles cannot be rolled up. Postgres
interpolates percentiles (``percentile_cont``); SQLite, which has no percentile function,
reports the nearest-rank percentile (an observed value: the ceil(p*n)-th smallest TTFT).
``goodput`` is the share of requests that met the route's latency target among those judged
(``slo_met`` not NULL); it is NULL for a route without a target.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Counts cast back to BIGINT: Postgres widens SUM(bigint) to numeric.
_SPEND_SUMS = """
    CAST(SUM(requests) AS BIGINT) AS requests,
    CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens,
    CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens,
    CAST(SUM(cached_tokens) AS BIGINT) AS cached_tokens,
    SUM(cost_usd) AS cost_usd,
    SUM(cost_saved_usd) AS cost_saved_usd"""

SPEND_VIEWS = {
    "team_spend_daily": f"""
CREATE VIEW team_spend_daily AS
SELECT day, team,{_SPEND_SUMS}
FROM usage_daily
GROUP BY day, team""",
    "model_spend_daily": f"""
CREATE VIEW model_spend_daily AS
SELECT day, team, NULLIF(deployment, '') AS deployment,{_SPEND_SUMS}
FROM usage_daily
GROUP BY day, team, deployment""",
    "key_spend_daily": f"""
CREATE VIEW key_spend_daily AS
SELECT day, team, NULLIF(key_id, '') AS key_id,{_SPEND_SUMS}
FROM usage_daily
GROUP BY day, team, key_id""",
}

SLO_DAILY_POSTGRES = """
CREATE VIEW slo_daily AS
SELECT
    (ts AT TIME ZONE 'UTC')::date AS day,
    route,
    COUNT(*) AS requests,
    COUNT(*) FILTER (WHERE slo_met) AS slo_met_requests,
    (COUNT(*) FILTER (WHERE slo_met))::double precision / NULLIF(COUNT(slo_met), 0) AS goodput,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p50_ms,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p95_ms
FROM usage_ledger
WHERE route IS NOT NULL
GROUP BY 1, 2"""

# Nearest rank without ceil() (SQLite's math functions are optional): for n timed requests,
# ceil(n/2) = (n + 1) / 2 and ceil(0.95 n) = (95 n + 99) / 100 in integer arithmetic.
SLO_DAILY_SQLITE = """
CREATE VIEW slo_daily AS
WITH ranked AS (
    SELECT
        date(ts) AS day,
        route,
        slo_met,
        ttft_ms,
        ROW_NUMBER() OVER (
            PARTITION BY date(ts), route ORDER BY ttft_ms IS NULL, ttft_ms
        ) AS rank,
        COUNT(ttft_ms) OVER (PARTITION BY date(ts), route) AS timed
    FROM usage_ledger
    WHERE route IS NOT NULL
)
SELECT
    day,
    route,
    COUNT(*) AS requests,
    SUM(CASE WHEN slo_met THEN 1 ELSE 0 END) AS slo_met_requests,
    CAST(SUM(CASE WHEN slo_met THEN 1 ELSE 0 END) AS REAL) / NULLIF(COUNT(slo_met), 0)
        AS goodput,
    MAX(CASE WHEN ttft_ms IS NOT NULL AND rank = (timed + 1) / 2 THEN ttft_ms END)
        AS ttft_p50_ms,
    MAX(CASE WHEN ttft_ms IS NOT NULL AND rank = (95 * timed + 99) / 100 THEN ttft_ms END)
        AS ttft_p95_ms
FROM ranked
GROUP BY day, route"""

VIEWS = ("slo_daily", "key_spend_daily", "model_spend_daily", "team_spend_daily")


def _text(length: int) -> sa.String:
    return sa.String(length=length)


def upgrade() -> None:
    tags = sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )
    op.create_table(
        "usage_ledger",
        sa.Column("request_id", _text(128), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("team", _text(128), nullable=False),
        sa.Column("key_id", _text(64), nullable=True),
        sa.Column("route", _text(128), nullable=True),
        sa.Column("requested_model", _text(256), nullable=True),
        sa.Column("deployment", _text(128), nullable=True),
        sa.Column("provider", _text(128), nullable=True),
        sa.Column("replica", _text(256), nullable=True),
        sa.Column("status", _text(32), nullable=False),
        sa.Column("http_status", sa.SmallInteger(), nullable=False),
        sa.Column("error_type", _text(64), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(20, 10), nullable=False),
        sa.Column("cost_saved_usd", sa.Numeric(20, 10), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("end_user", _text(256), nullable=True),
        sa.Column("tags", tags, nullable=True),
        sa.Column("slo_met", sa.Boolean(), nullable=True),
        # The x-request-id the client sent, when it sent one (request_id stays the gateway's own,
        # unique even when a client reuses its ids).
        sa.Column("client_request_id", _text(128), nullable=True),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_usage_ledger")),
    )
    op.create_index("ix_usage_ledger_team_ts", "usage_ledger", ["team", "ts"])
    op.create_index("ix_usage_ledger_key_id_ts", "usage_ledger", ["key_id", "ts"])
    op.create_table(
        "usage_daily",
        sa.Column("team", _text(128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("key_id", _text(64), nullable=False),
        sa.Column("route", _text(128), nullable=False),
        sa.Column("deployment", _text(128), nullable=False),
        sa.Column("status", _text(32), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(28, 10), nullable=False),
        sa.Column("cost_saved_usd", sa.Numeric(28, 10), nullable=False),
        sa.PrimaryKeyConstraint(
            "team", "day", "key_id", "route", "deployment", "status", name=op.f("pk_usage_daily")
        ),
    )
    for statement in SPEND_VIEWS.values():
        op.execute(statement)
    postgres = op.get_context().dialect.name == "postgresql"
    op.execute(SLO_DAILY_POSTGRES if postgres else SLO_DAILY_SQLITE)


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("usage_daily")
    op.drop_index("ix_usage_ledger_key_id_ts", table_name="usage_ledger")
    op.drop_index("ix_usage_ledger_team_ts", table_name="usage_ledger")
    op.drop_table("usage_ledger")
