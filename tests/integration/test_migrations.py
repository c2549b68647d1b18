"""Migrations against real Postgres and SQLite: up from empty, down, up again, concurrently."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from gateway.db.engine import create_engine, redact_url
from gateway.db.migrate import (
    MigrationsNotFound,
    current_revision,
    downgrade,
    head_revision,
    migrations_dir,
    upgrade,
    upgrade_if_new,
)
from gateway.db.models import Base

API_KEY_COLUMNS = {
    # name: nullable
    "id": False,
    "team": False,
    "name": True,
    "key_hash": False,
    "prefix": False,
    "created_at": False,
    "expires_at": True,
    "revoked_at": True,
}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest) -> str:
    """An empty database of this test's own, on each backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


async def _inspect(url: str) -> dict[str, Any]:
    def read(conn: Connection) -> dict[str, Any]:
        inspector = inspect(conn)
        tables = set(inspector.get_table_names())
        schema: dict[str, Any] = {"tables": tables}
        if "api_keys" in tables:
            columns = inspector.get_columns("api_keys")
            schema["columns"] = {c["name"]: c["nullable"] for c in columns}
            schema["pk"] = inspector.get_pk_constraint("api_keys")
            schema["indexes"] = inspector.get_indexes("api_keys")
            schema["uniques"] = inspector.get_unique_constraints("api_keys")
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
            schema["diff"] = diff
        return schema

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_upgrade_from_empty_creates_api_keys(empty_db: str) -> None:
    assert await current_revision(empty_db) is None

    await upgrade(empty_db)

    assert await current_revision(empty_db) == head_revision()
    schema = await _inspect(empty_db)
    assert {"api_keys", "alembic_version"} <= schema["tables"]
    assert "teams" not in schema["tables"]  # teams live in the policy, not the database
    assert schema["columns"] == API_KEY_COLUMNS
    assert schema["pk"]["constrained_columns"] == ["id"]
    assert schema["pk"]["name"] == "pk_api_keys"
    team_index = [i for i in schema["indexes"] if i["column_names"] == ["team"]]
    assert [i["name"] for i in team_index] == ["ix_api_keys_team"]
    assert [(u["name"], u["column_names"]) for u in schema["uniques"]] == [
        ("uq_api_keys_key_hash", ["key_hash"])
    ]


async def test_models_match_migrations(empty_db: str) -> None:
    # The ORM models and the migration scripts describe the same schema: autogenerate finds
    # nothing to do.
    await upgrade(empty_db)
    assert (await _inspect(empty_db))["diff"] == []


async def test_downgrade_one_step_then_upgrade_again(empty_db: str) -> None:
    await upgrade(empty_db)

    await downgrade(empty_db, "-1")
    assert await current_revision(empty_db) == "0001"
    tables = (await _inspect(empty_db))["tables"]
    assert "api_keys" in tables and "usage_ledger" not in tables
    await downgrade(empty_db, "base")
    assert await current_revision(empty_db) is None
    assert "api_keys" not in (await _inspect(empty_db))["tables"]

    await upgrade(empty_db)
    assert await current_revision(empty_db) == head_revision()
    assert (await _inspect(empty_db))["columns"] == API_KEY_COLUMNS


async def test_upgrade_twice_is_a_no_op(empty_db: str) -> None:
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

    await upgrade(empty_db)

    engine = create_engine(empty_db)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM api_keys"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_upgrade_if_new_only_touches_new_databases(empty_db: str) -> None:
    assert await upgrade_if_new(empty_db) is True
    assert await upgrade_if_new(empty_db) is False
    assert await current_revision(empty_db) == head_revision()


async def test_replicas_migrating_together_do_not_race(fresh_postgres_url: str) -> None:
    # Without the advisory lock, all but one would fail on CREATE TABLE api_keys.
    await asyncio.gather(*(upgrade(fresh_postgres_url) for _ in range(4)))
    assert await current_revision(fresh_postgres_url) == head_revision()


def test_missing_migrations_directory_is_a_clear_error(tmp_path: Path, sqlite_url: str) -> None:
    with pytest.raises(MigrationsNotFound, match="migrations not found"):
        asyncio.run(upgrade(sqlite_url, script_location=tmp_path / "nowhere"))
    assert not Path(sqlite_url.removeprefix("sqlite+aiosqlite:///")).exists()


def test_migrations_dir_is_the_top_level_directory() -> None:
    assert (migrations_dir() / "env.py").is_file()
    assert (migrations_dir().parent / "alembic.ini").is_file()


async def test_sqlite_engine_uses_wal_and_creates_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "tollgate.db"
    engine = create_engine(f"sqlite:///{path}")  # the async driver is filled in
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
    finally:
        await engine.dispose()
    assert path.exists()


def test_redact_url_hides_passwords() -> None:
    assert "s3cret" not in redact_url("postgresql+asyncpg://u:s3cret@db/x")
    assert redact_url("not a url") == "<unparseable database URL>"


def test_plain_alembic_command_line(sqlite_url: str) -> None:
    # `alembic upgrade head` from the repository root works too, for operators who expect it.
    root = migrations_dir().parent
    for args in (["upgrade", "head"], ["downgrade", "base"], ["upgrade", "head"]):
        subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={sqlite_url}", *args],
            cwd=root,
            check=True,
            capture_output=True,
        )
    assert asyncio.run(current_revision(sqlite_url)) == head_revision()
