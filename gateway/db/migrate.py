"""Running the Alembic migrations in ``migrations/`` programmatically, on the async engine.

Replicas may start together against one Postgres: each takes the same session-level advisory
lock around its migration, so exactly one applies it and the others then find the schema at head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

import gateway
from gateway.db.engine import create_engine, redact_url

__all__ = [
    "ADVISORY_LOCK_ID",
    "MigrationsNotFound",
    "current_revision",
    "downgrade",
    "head_revision",
    "migrations_dir",
    "upgrade",
    "upgrade_if_new",
]

logger = logging.getLogger(__name__)

# "tollgate" in ASCII: a fixed bigint every replica agrees on, unlikely to clash with other apps.
ADVISORY_LOCK_ID = 0x746F6C6C67617465

_Action = Callable[[Config], None]


class MigrationsNotFound(FileNotFoundError):
    """The ``migrations/`` directory is not where the package expects it."""


def migrations_dir() -> Path:
    """The top-level ``migrations/`` directory next to the ``gateway`` package."""
    return Path(gateway.__file__).resolve().parent.parent / "migrations"


async def upgrade(url: str, revision: str = "head", *, script_location: Path | None = None) -> None:
    """Migrate the database at ``url`` up to ``revision`` (a no-op when it is already there)."""
    await _run(url, lambda config: command.upgrade(config, revision), script_location)
    logger.info("database %s upgraded to %s", redact_url(url), revision)


async def downgrade(url: str, revision: str, *, script_location: Path | None = None) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``-1``, ``base``, or an id)."""
    await _run(url, lambda config: command.downgrade(config, revision), script_location)
    logger.info("database %s downgraded to %s", redact_url(url), revision)


async def current_revision(url: str) -> str | None:
    """The revision the database is at, or ``None`` for a database never migrated."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current_revision)
    finally:
        await engine.dispose()


async def upgrade_if_new(url: str, *, script_location: Path | None = None) -> bool:
    """Upgrade to head only if the database has never been migrated. True if it was."""
    if await current_revision(url) is not None:
        return False
    await upgrade(url, script_location=script_location)
    return True


def head_revision(script_location: Path | None = None) -> str | None:
    """The newest revision in the migration scripts."""
    config = _config(_script_location(script_location), None)
    return ScriptDirectory.from_config(config).get_current_head()


async def _run(url: str, action: _Action, script_location: Path | None) -> None:
    location = _script_location(script_location)  # fail before touching the database
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            locked = conn.dialect.name == "postgresql"
            if locked:
                await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID})
                # The lock is held by the session, not the transaction: end this one so the
                # migration below runs in a transaction of its own.
                await conn.commit()
            try:
                # An outer transaction: Alembic sees it and leaves the commit to us, so on
                # Postgres every pending revision applies atomically.
                async with conn.begin():
                    await conn.run_sync(_apply, location, action)
            finally:
                if locked:
                    await _unlock(conn)
    finally:
        await engine.dispose()


def _apply(connection: Connection, location: Path, action: _Action) -> None:
    action(_config(location, connection))


async def _unlock(conn: AsyncConnection) -> None:
    try:
        await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
        await conn.commit()
    except SQLAlchemyError:
        # A broken connection cannot unlock, but closing it (engine.dispose) releases the
        # session's locks just the same; don't hide the migration's own outcome behind this.
        logger.warning("could not release the migration lock; closing the connection instead")


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _config(location: Path, connection: Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(location))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _script_location(location: Path | None) -> Path:
    path = location if location is not None else migrations_dir()
    if not (path / "env.py").is_file():
        raise MigrationsNotFound(
            f"Alembic migrations not found: {path / 'env.py'} does not exist. Tollgate expects "
            "the top-level migrations/ directory next to the gateway package (run it from a "
            "source checkout or an editable install)."
        )
    return path
