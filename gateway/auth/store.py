"""Issuing, listing and revoking API keys. Only hashes are stored; a key is shown once."""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gateway.auth.keys import KeyRecord, display_prefix, generate_key, hash_key
from gateway.db.api_keys import ApiKeyRow, ApiKeyTable
from gateway.db.engine import SessionFactory

__all__ = ["KeyStore"]

# Shorter than this, a key's display prefix would give away too much of it.
_MIN_KEY_LENGTH = 24


def _utcnow() -> datetime:
    return datetime.now(UTC)


class KeyStore:
    """API keys in the database (``api_keys``), behind an async session factory.

    ``now`` is the wall clock used for ``created_at``/``expires_at``/``revoked_at``.
    """

    def __init__(self, sessions: SessionFactory, *, now: Callable[[], datetime] = _utcnow) -> None:
        self._table = ApiKeyTable(sessions)
        self._now = now

    async def create(
        self, team: str, name: str | None = None, expires_in: timedelta | None = None
    ) -> tuple[str, KeyRecord]:
        """Issue a key for ``team``. Returns the plaintext (the only time it exists) and record."""
        if not team:
            raise ValueError("a key needs a team")
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError("expires_in must be positive")
        plaintext = generate_key()
        created_at = self._now()
        row = ApiKeyRow(
            id=_new_id(),
            team=team,
            name=name,
            key_hash=hash_key(plaintext),
            prefix=display_prefix(plaintext),
            created_at=created_at,
            expires_at=None if expires_in is None else created_at + expires_in,
            revoked_at=None,
        )
        await self._table.insert(row)
        return plaintext, _record(row)

    async def list(self, team: str | None = None) -> builtins.list[KeyRecord]:
        """Every key (or ``team``'s), oldest first, whatever its status."""
        return [_record(row) for row in await self._table.list(team)]

    async def revoke(self, id_or_prefix: str) -> KeyRecord:
        """Revoke a key by id (``key_...``) or display prefix (``tg-...``).

        Raises :class:`LookupError` if no key matches or a prefix matches several.
        """
        return _record(await self._table.revoke(id_or_prefix, self._now()))

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key with this SHA-256 hex digest, or ``None``.

        Raises :class:`~gateway.errors.ServiceUnavailable` if the database cannot be reached.
        """
        row = await self._table.by_hash(key_hash)
        return None if row is None else _record(row)

    async def ensure_key(self, team: str, plaintext: str, name: str | None = None) -> KeyRecord:
        """Store a key chosen elsewhere (the demo key) unless its hash is already stored.

        An existing key is returned as it is, even if revoked or in another team: revocation
        must stick, and the caller's arguments only describe a key being created.
        """
        if len(plaintext) < _MIN_KEY_LENGTH:
            raise ValueError(f"a key must be at least {_MIN_KEY_LENGTH} characters long")
        row = ApiKeyRow(
            id=_new_id(),
            team=team,
            name=name,
            key_hash=hash_key(plaintext),
            prefix=display_prefix(plaintext),
            created_at=self._now(),
            expires_at=None,
            revoked_at=None,
        )
        return _record(await self._table.insert_if_absent(row))


def _new_id() -> str:
    return "key_" + secrets.token_hex(8)


def _record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        team=row.team,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )
