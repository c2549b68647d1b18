"""Migrations applied by a child process (what ``tollgate serve`` does), on real SQLite/Postgres.

The point of the child is that the caller never imports Alembic; it must still apply the same
migrations, under the same advisory lock, and fail loudly when they fail.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from gateway.db.engine import create_engine
from gateway.db.migrate import (
    MigrationFailed,
    MigrationsNotFound,
    current_revision,
    head_revision,
    migrations_dir,
    upgrade_in_subprocess,
)

# A revision after head that fails half-way, to see what a failure in the child leaves behind.
_BROKEN_REVISION = textwrap.dedent(
    """
    import sqlalchemy as sa
    from alembic import op

    revision = "9999"
    down_revision = "{head}"
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
        raise RuntimeError("broken on purpose")


    def downgrade() -> None:
        op.drop_table("half_done")
    """
)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest) -> str:
    """An empty database of this test's own, on each backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


async def _tables(url: str) -> set[str]:
    def read(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_the_child_brings_an_empty_database_to_head(empty_db: str) -> None:
    await upgrade_in_subprocess(empty_db)

    assert await current_revision(empty_db) == head_revision()
    assert {"api_keys", "usage_ledger", "alembic_version"} <= await _tables(empty_db)
    await upgrade_in_subprocess(empty_db)  # at head already: nothing to do, no error
    assert await current_revision(empty_db) == head_revision()


async def test_children_of_replicas_starting_together_do_not_race(fresh_postgres_url: str) -> None:
    # Each child takes the advisory lock: without it, all but one would fail on CREATE TABLE.
    await asyncio.gather(*(upgrade_in_subprocess(fresh_postgres_url) for _ in range(3)))
    assert await current_revision(fresh_postgres_url) == head_revision()


async def test_a_failing_migration_fails_the_caller_and_rolls_back(
    tmp_path: Path, fresh_postgres_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), scripts)
    broken = _BROKEN_REVISION.format(head=head_revision())
    (scripts / "versions" / "9999_broken.py").write_text(broken)

    with pytest.raises(MigrationFailed, match="failed in a child process"):
        await upgrade_in_subprocess(fresh_postgres_url, script_location=scripts)

    # Every pending revision runs in one transaction on Postgres: none of them stayed.
    assert await current_revision(fresh_postgres_url) is None
    assert not {"api_keys", "half_done"} & await _tables(fresh_postgres_url)
    # Why it failed is in the child's log, on the caller's stderr.
    assert "RuntimeError: broken on purpose" in capfd.readouterr().err


async def test_an_unreachable_database_fails_the_caller(
    capfd: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql+asyncpg://postgres:s3cret@127.0.0.1:1/nowhere"
    with pytest.raises(MigrationFailed) as raised:
        await upgrade_in_subprocess(url)
    assert "s3cret" not in str(raised.value)
    err = capfd.readouterr().err
    assert '"msg":"migration failed"' in err
    assert "s3cret" not in err


def test_a_missing_migrations_directory_fails_before_any_child(
    tmp_path: Path, sqlite_url: str
) -> None:
    with pytest.raises(MigrationsNotFound, match="migrations not found"):
        asyncio.run(upgrade_in_subprocess(sqlite_url, script_location=tmp_path / "nowhere"))
    assert not Path(sqlite_url.removeprefix("sqlite+aiosqlite:///")).exists()


_SERVER_SIDE = textwrap.dedent(
    """
    import asyncio, sys

    import gateway.app, gateway.cli  # everything a serving process imports
    from gateway.db.migrate import upgrade_in_subprocess

    asyncio.run(upgrade_in_subprocess(sys.argv[1]))
    leaked = sorted({name.split(".")[0] for name in sys.modules} & {"alembic", "mako"})
    assert not leaked, f"imported by the caller: {leaked}"
    """
)


def test_the_caller_never_imports_alembic(sqlite_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SERVER_SIDE, sqlite_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert asyncio.run(current_revision(sqlite_url)) == head_revision()


def test_the_child_runs_the_callers_package_not_one_in_the_working_directory(
    tmp_path: Path, sqlite_url: str
) -> None:
    decoy = tmp_path / "elsewhere" / "gateway"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text('raise ImportError("the decoy gateway was imported")\n')
    script = "import asyncio, sys\n" + (
        "from gateway.db.migrate import upgrade_in_subprocess\n"
        "asyncio.run(upgrade_in_subprocess(sys.argv[1]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", script, sqlite_url],  # -P: the caller skips the decoy too
        cwd=decoy.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert asyncio.run(current_revision(sqlite_url)) == head_revision()
