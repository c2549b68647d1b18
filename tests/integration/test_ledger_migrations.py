"""Migration 0002 (usage ledger, roll-up, views) on Postgres and SQLite: up, down one, up again."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

import gateway.ledger.models  # noqa: F401  (the ledger tables on Base.metadata)
from gateway.db.engine import create_engine
from gateway.db.migrate import current_revision, downgrade, migrations_dir, upgrade
from gateway.db.models import Base
from gateway.ledger.rows import COLUMNS

LEDGER_TABLES = {"usage_ledger", "usage_daily"}
VIEWS = {"team_spend_daily", "model_spend_daily", "key_spend_daily", "slo_daily"}
NULLABLE = {
    "key_id",
    "route",
    "requested_model",
    "deployment",
    "provider",
    "replica",
    "error_type",
    "ttft_ms",
    "total_ms",
    "end_user",
    "tags",
    "slo_met",
    "client_request_id",
}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


async def _inspect(url: str) -> dict[str, Any]:
    def read(conn: Connection) -> dict[str, Any]:
        inspector = inspect(conn)
        tables = set(inspector.get_table_names())
        schema: dict[str, Any] = {"tables": tables, "views": set(inspector.get_view_names())}
        if "usage_ledger" in tables:
            columns = inspector.get_columns("usage_ledger")
            schema["columns"] = [c["name"] for c in columns]
            schema["nullable"] = {c["name"] for c in columns if c["nullable"]}
            schema["pk"] = inspector.get_pk_constraint("usage_ledger")["constrained_columns"]
            schema["indexes"] = {
                i["name"]: i["column_names"] for i in inspector.get_indexes("usage_ledger")
            }
            schema["daily_pk"] = inspector.get_pk_constraint("usage_daily")["constrained_columns"]
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            schema["diff"] = compare_metadata(context, Base.metadata)
        return schema

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_upgrade_from_empty_creates_the_ledger(empty_db: str) -> None:
    await upgrade(empty_db)

    assert await current_revision(empty_db) == "0002"
    schema = await _inspect(empty_db)
    assert LEDGER_TABLES | {"api_keys"} <= schema["tables"]
    assert schema["views"] >= VIEWS
    assert schema["columns"] == list(COLUMNS)
    assert schema["nullable"] == NULLABLE
    assert schema["pk"] == ["request_id"]
    assert schema["indexes"] == {
        "ix_usage_ledger_team_ts": ["team", "ts"],
        "ix_usage_ledger_key_id_ts": ["key_id", "ts"],
    }
    assert schema["daily_pk"] == ["team", "day", "key_id", "route", "deployment", "status"]
    # The models and the migration describe the same tables: autogenerate has nothing to do.
    assert schema["diff"] == []


async def test_downgrade_one_step_then_upgrade_again(empty_db: str) -> None:
    await upgrade(empty_db)
    engine = create_engine(empty_db)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO api_keys (id, team, key_hash, prefix, created_at) "
                    "VALUES ('key_0', 't', 'h', 'tg-x', CURRENT_TIMESTAMP)"
                )
            )
    finally:
        await engine.dispose()

    await downgrade(empty_db, "-1")
    assert await current_revision(empty_db) == "0001"
    schema = await _inspect(empty_db)
    assert not (LEDGER_TABLES & schema["tables"])
    assert not (VIEWS & schema["views"])
    assert "api_keys" in schema["tables"]  # 0001's table and its rows are untouched

    await upgrade(empty_db)
    assert await current_revision(empty_db) == "0002"
    schema = await _inspect(empty_db)
    assert schema["views"] >= VIEWS
    assert schema["diff"] == []
    engine = create_engine(empty_db)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM api_keys"))).scalar() == 1
            for view in VIEWS:  # every view compiles against the tables
                await conn.execute(text(f"SELECT * FROM {view}"))
    finally:
        await engine.dispose()


def test_offline_sql_renders_for_postgres() -> None:
    # `alembic upgrade --sql` (for DBAs who apply SQL by hand) must not need a connection.
    result = subprocess.run(
        [
            sys.executable, "-m", "alembic",
            "-x", "url=postgresql+asyncpg://nobody@127.0.0.1:1/none",
            "upgrade", "0001:0002", "--sql",
        ],
        cwd=migrations_dir().parent,
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert "CREATE TABLE usage_ledger" in result.stdout
    assert "percentile_cont(0.5)" in result.stdout
