"""Async engines for the embedded SQLite file and for Postgres, and their session factories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.exc import DBAPIError as DatabaseError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = [
    "AsyncEngine",
    "DatabaseError",
    "SessionFactory",
    "create_engine",
    "ping",
    "redact_url",
    "session_factory",
]

SessionFactory = async_sessionmaker[AsyncSession]

# How long a SQLite writer waits for another one (another worker, the CLI) before SQLITE_BUSY.
SQLITE_BUSY_TIMEOUT_MS = 5_000


def create_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> AsyncEngine:
    """An async engine for ``url``: ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``.

    Bare ``sqlite://``, ``postgres://`` and ``postgresql://`` URLs get the async driver, so the
    URL a user already has for psql works. ``pool_size``/``max_overflow`` apply to Postgres.
    """
    parsed = _with_async_driver(make_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        return create_async_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=10,
            # A replica outlives database restarts and failovers: test connections on checkout
            # and recycle them before server-side idle timeouts cut them.
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={
                "timeout": 10,  # connect timeout, seconds
                "command_timeout": 60,
                "server_settings": {"application_name": "tollgate"},
            },
        )
    raise ValueError(
        f"unsupported database URL {redact_url(url)!r}: "
        "use sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host/db"
    )


def session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions whose objects stay readable after commit (they are handed out as plain data)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Run ``SELECT 1``: raises if the database cannot be reached (for readiness checks)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def redact_url(url: str) -> str:
    """``url`` with any password masked, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _with_async_driver(url: URL) -> URL:
    if url.drivername == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if url.drivername in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+asyncpg")
    return url


def _sqlite_engine(url: URL) -> AsyncEngine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers (key lookups) proceed while a writer (the ledger, the CLI) commits;
        # busy_timeout makes concurrent writers queue instead of failing with "database is locked".
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine
