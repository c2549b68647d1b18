"""Running the Alembic migrations in ``migrations/`` programmatically, on the async engine.

Replicas may start together against one Postgres: each takes the same session-level advisory
lock around its migration, so exactly one applies it and the others then find the schema at head.

Alembic is imported only inside the functions that run it (every command of the CLI imports this
module), and ``tollgate serve`` migrates through :func:`upgrade_in_subprocess`: Python never
unloads a module, so a server that ran Alembic itself would keep Alembic, Mako, Pygments and the
migration scripts (~8 MB resident) for its whole life to use them once at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

import gateway
from gateway.db.engine import create_engine, redact_url

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

__all__ = [
    "ADVISORY_LOCK_ID",
    "MigrationFailed",
    "MigrationsNotFound",
    "current_revision",
    "downgrade",
    "head_revision",
    "migrations_dir",
    "upgrade",
    "upgrade_if_new",
    "upgrade_in_subprocess",
]

logger = logging.getLogger(__name__)

# "tollgate" in ASCII: a fixed bigint every replica agrees on, unlikely to clash with other apps.
ADVISORY_LOCK_ID = 0x746F6C6C67617465

_Verb = Literal["upgrade", "downgrade"]

# How upgrade_in_subprocess hands the URL to its child: not on the command line, where `ps`
# would show a password in it.
URL_VARIABLE = "TOLLGATE_MIGRATE_DATABASE_URL"

# The child's program: put the package root it is given first on sys.path, then migrate.
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from gateway.db.upgrade_child import main; sys.exit(main(sys.argv[1:]))"
)


class MigrationsNotFound(FileNotFoundError):
    """The ``migrations/`` directory is not where the package expects it."""


class MigrationFailed(RuntimeError):
    """The child process of :func:`upgrade_in_subprocess` did not bring the database up.

    Why is in its log, on the same stderr as the caller's.
    """


def migrations_dir() -> Path:
    """The top-level ``migrations/`` directory next to the ``gateway`` package."""
    return _package_root() / "migrations"


def _package_root() -> Path:
    return Path(gateway.__file__).resolve().parent.parent


async def upgrade(url: str, revision: str = "head", *, script_location: Path | None = None) -> None:
    """Migrate the database at ``url`` up to ``revision`` (a no-op when it is already there)."""
    await _run(url, "upgrade", revision, script_location)
    logger.info("database %s upgraded to %s", redact_url(url), revision)


async def downgrade(url: str, revision: str, *, script_location: Path | None = None) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``-1``, ``base``, or an id)."""
    await _run(url, "downgrade", revision, script_location)
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


async def upgrade_in_subprocess(
    url: str,
    revision: str = "head",
    *,
    script_location: Path | None = None,
    log_level: str = "info",
) -> None:
    """:func:`upgrade`, applied by a short-lived child process: this one never imports Alembic.

    The child takes the same advisory lock, so replicas starting together still migrate one at
    a time, and it logs (JSON lines at ``log_level``) to this process's stderr. Raises
    :class:`MigrationFailed` if it exits with an error; if this call is cancelled, the child is
    killed and its transaction rolls back.
    """
    location = _script_location(script_location)  # a missing directory fails here, clearly
    # -P and an explicit path: the child runs this very gateway package, never another one that
    # happens to sit in the working directory.
    argv = [sys.executable, "-P", "-c", _CHILD, str(_package_root()), revision]
    argv += ["--script-location", str(location), "--log-level", log_level]
    child = await asyncio.create_subprocess_exec(
        *argv,
        env=os.environ | {URL_VARIABLE: url},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # stdout may be a pipe a caller reads (the demo key)
    )
    try:
        code = await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if code != 0:
        raise MigrationFailed(
            f"migrating {redact_url(url)} to {revision} failed in a child process "
            f"(exit code {code}); its log above says why"
        )


def head_revision(script_location: Path | None = None) -> str | None:
    """The newest revision in the migration scripts."""
    from alembic.script import ScriptDirectory

    config = _config(_script_location(script_location), None)
    return ScriptDirectory.from_config(config).get_current_head()


async def _run(url: str, verb: _Verb, revision: str, script_location: Path | None) -> None:
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
                    await conn.run_sync(_apply, location, verb, revision)
            finally:
                if locked:
                    await _unlock(conn)
    finally:
        await engine.dispose()


def _apply(connection: Connection, location: Path, verb: _Verb, revision: str) -> None:
    from alembic import command

    action = command.upgrade if verb == "upgrade" else command.downgrade
    action(_config(location, connection), revision)


async def _unlock(conn: AsyncConnection) -> None:
    try:
        await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
        await conn.commit()
    except SQLAlchemyError:
        # A broken connection cannot unlock, but closing it (engine.dispose) releases the
        # session's locks just the same; don't hide the migration's own outcome behind this.
        logger.warning("could not release the migration lock; closing the connection instead")


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _config(location: Path, connection: Connection | None) -> Config:
    from alembic.config import Config

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
