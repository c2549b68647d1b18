"""The run's own Postgres database and Redis key prefix: created fresh, counted, cleaned up.

The shared servers are never stopped or reconfigured: the bench only creates (and drops) its
own database and deletes keys under its own prefix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]
import redis

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
POSTGRES_HINT = (
    "The bench needs PostgreSQL (apt-get install postgresql; user postgres on 127.0.0.1:5432) "
    "and Redis (apt-get install redis-server; 127.0.0.1:6379), or --postgres-url/--redis-url, "
    "or --embedded to measure the embedded mode (SQLite, in-process state) instead."
)


class ServiceError(RuntimeError):
    """Postgres or Redis is not reachable."""


@dataclass(frozen=True, slots=True)
class BenchDatabase:
    """A database of the bench's own on a Postgres server."""

    admin_url: str  # postgresql://user@host:port/postgres (asyncpg form)
    name: str

    @property
    def url(self) -> str:
        """The gateway's ``TOLLGATE_DATABASE_URL`` for it (SQLAlchemy + asyncpg)."""
        base = self.admin_url.rsplit("/", 1)[0]
        return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + self.name

    def recreate(self) -> None:
        """Drop it if it exists (a previous run) and create it empty."""
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        """Drop it (the end of a run, unless --keep-db)."""
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def ledger_rows(self) -> dict[str, int]:
        """Rows per table whose name contains ``ledger`` or ``usage`` (empty: no ledger yet)."""
        return asyncio.run(self._ledger_rows())

    async def _admin(self, statement: str) -> None:
        try:
            conn = await asyncpg.connect(self.admin_url, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ServiceError(f"Postgres at {self.admin_url}: {exc}\n{POSTGRES_HINT}") from None
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def _ledger_rows(self) -> dict[str, int]:
        conn = await asyncpg.connect(self.url.replace("+asyncpg", ""), timeout=5)
        try:
            names = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND (table_name LIKE '%ledger%' OR table_name LIKE '%usage%')"
            )
            counts: dict[str, int] = {}
            for row in names:
                table = row["table_name"]
                counts[table] = int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))
            return counts
        finally:
            await conn.close()


def check_redis(url: str) -> str:
    """The Redis server's version; :class:`ServiceError` if it does not answer."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        info = client.info("server")
        return str(info.get("redis_version", "?"))
    except redis.RedisError as exc:
        raise ServiceError(f"Redis at {url}: {exc}\n{POSTGRES_HINT}") from None
    finally:
        client.close()


def redis_keys(url: str, prefix: str, delete: bool = False) -> int:
    """How many keys live under ``prefix`` (and delete them when asked)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
    try:
        count = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            count += 1
            if delete:
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch.clear()
        if batch:
            client.unlink(*batch)
        return count
    finally:
        client.close()
