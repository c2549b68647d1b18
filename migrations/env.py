"""Alembic environment for Tollgate.

Two ways in:

* programmatically (``gateway.db.migrate``): the caller passes an open synchronous connection in
  ``config.attributes["connection"]`` (from ``AsyncConnection.run_sync``) and owns the
  transaction and the Postgres advisory lock;
* by hand (``alembic upgrade head``): the URL comes from ``-x url=...``, ``sqlalchemy.url``, or
  ``Settings().resolved_database_url()``, and an async engine runs the migration via run_sync.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

import gateway.ledger.models  # noqa: F401  (declares usage_ledger and usage_daily on Base)
from gateway.db.engine import create_engine
from gateway.db.models import Base
from gateway.settings import Settings

# Every module declaring tables on Base must be imported above so autogenerate sees the whole
# schema.
target_metadata = Base.metadata
config = context.config


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    return url or config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url()


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_migrate)
            await conn.commit()
    finally:
        await engine.dispose()


def run_offline() -> None:
    """``alembic upgrade head --sql``: print the SQL instead of running it."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run against a live database: the caller's connection if given, else our own engine."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
    else:
        asyncio.run(_migrate_url(_url()))


if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline()
else:
    run_online()
