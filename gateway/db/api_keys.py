"""Queries on the ``api_keys`` table, returning plain frozen rows.

``gateway.auth`` builds on this (key generation, hashing, statuses) without importing SQLAlchemy.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError

from gateway.db.engine import SessionFactory
from gateway.db.models import ApiKey
from gateway.errors import ServiceUnavailable

__all__ = ["ApiKeyRow", "ApiKeyTable"]


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """One row of ``api_keys``, detached from any session."""

    id: str
    team: str
    name: str | None
    key_hash: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyTable:
    """The ``api_keys`` table behind an async session factory."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def by_hash(self, key_hash: str) -> ApiKeyRow | None:
        """The row with this SHA-256, or ``None``.

        This is the request path's lookup, so connection failures become
        :class:`~gateway.errors.ServiceUnavailable` (a 503 the client may retry) rather than a
        driver exception.
        """
        try:
            async with self._sessions() as session:
                model = await session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        except (ProgrammingError, DataError, IntegrityError):
            raise  # a bug or a missing migration, not an outage: let it be seen as one
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise ServiceUnavailable("The API key store is unavailable; try again.") from exc
        return None if model is None else _row(model)

    async def insert(self, row: ApiKeyRow) -> None:
        """Insert ``row``. Raises ``sqlalchemy.exc.IntegrityError`` on a duplicate id or hash."""
        async with self._sessions.begin() as session:
            session.add(_model(row))

    async def insert_if_absent(self, row: ApiKeyRow) -> ApiKeyRow:
        """Insert ``row`` unless a key with the same hash exists; return the stored row."""
        existing = await self.by_hash(row.key_hash)
        if existing is not None:
            return existing
        try:
            await self.insert(row)
        except IntegrityError:
            # Another process (a replica starting alongside us) inserted it between our read
            # and our write.
            existing = await self.by_hash(row.key_hash)
            if existing is None:
                raise
            return existing
        return row

    async def list(self, team: str | None = None) -> builtins.list[ApiKeyRow]:
        """Every key, or one team's, oldest first."""
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if team is not None:
            query = query.where(ApiKey.team == team)
        async with self._sessions() as session:
            return [_row(model) for model in await session.scalars(query)]

    async def revoke(self, id_or_prefix: str, at: datetime) -> ApiKeyRow:
        """Mark the key whose id or display prefix is ``id_or_prefix`` revoked at ``at``.

        Revoking a revoked key keeps its original ``revoked_at``. Raises :class:`LookupError`
        when nothing matches or the prefix matches several keys.
        """
        query = select(ApiKey).where(or_(ApiKey.id == id_or_prefix, ApiKey.prefix == id_or_prefix))
        async with self._sessions.begin() as session:
            matches = list(await session.scalars(query))
            if not matches:
                raise LookupError(f"no API key has the id or prefix {id_or_prefix!r}")
            if len(matches) > 1:
                raise LookupError(
                    f"{id_or_prefix!r} is the prefix of {len(matches)} keys; revoke by id instead"
                )
            model = matches[0]
            if model.revoked_at is None:
                model.revoked_at = at
        return _row(model)


def _row(model: ApiKey) -> ApiKeyRow:
    return ApiKeyRow(
        id=model.id,
        team=model.team,
        name=model.name,
        key_hash=model.key_hash,
        prefix=model.prefix,
        created_at=model.created_at,
        expires_at=model.expires_at,
        revoked_at=model.revoked_at,
    )


def _model(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        team=row.team,
        name=row.name,
        key_hash=row.key_hash,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )
