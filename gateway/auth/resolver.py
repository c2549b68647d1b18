"""From the key in ``Authorization: Bearer`` to the team it belongs to, on every request.

A cache hit costs one SHA-256, a few dict lookups and a clock read. Both answers are cached for
``ttl_s`` ("this key is team X" and "no such key"), so a flood of bad keys costs one database
query per distinct key per ``ttl_s`` rather than one per request; concurrent misses for the same
key share a single query. Revocation therefore takes effect within ``ttl_s``; expiry is checked
against the wall clock on every request and takes effect at once.

A key in use is refreshed ahead of its deadline (after ``REFRESH_AT`` of ``ttl_s``), in the
background, while its cached answer keeps serving: otherwise every ``ttl_s`` all of that key's
requests would queue behind one database query, a stall of milliseconds to tens of milliseconds
for the whole key under load. An answer is still never served past its deadline.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.keys import KeyRecord
from gateway.auth.store import KeyStore
from gateway.errors import AuthenticationFailed, ServiceUnavailable
from gateway.policy.schema import Policy

__all__ = ["KeyResolver", "Principal"]

MISSING_KEY = "Missing API key. Send it as 'Authorization: Bearer <key>'."
UNKNOWN_KEY = "Incorrect API key provided."
REVOKED_KEY = "This API key has been revoked."
EXPIRED_KEY = "This API key has expired."
UNKNOWN_TEAM = "This API key's team is not in the current policy."
REFRESH_AT = 0.75  # of ttl_s: when a cached answer in use is looked up again, in the background


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the team a request is billed and limited as, and which key it used."""

    team: str
    key_id: str
    key_name: str | None


class _Entry:
    """A cached lookup. ``principal`` is None for "no such key"."""

    __slots__ = ("deadline", "expires_at", "principal", "refresh_at", "revoked")

    def __init__(
        self,
        deadline: float,
        refresh_at: float,
        principal: Principal | None,
        revoked: bool,
        expires_at: float | None,
    ) -> None:
        self.deadline = deadline  # on the monotonic clock
        self.refresh_at = refresh_at  # on the monotonic clock
        self.principal = principal
        self.revoked = revoked
        self.expires_at = expires_at  # on the wall clock (epoch seconds)


class KeyResolver:
    """Resolves API keys to principals: static policy keys first, then the database, cached.

    ``clock`` (monotonic) times cache entries; ``wall_clock`` (epoch seconds) is compared with
    key expiry. ``max_entries`` bounds each of the positive and negative caches; the negative one
    is separate so a flood of bad keys cannot evict the good ones.
    """

    def __init__(
        self,
        store: KeyStore,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_entries = max_entries
        self._known: dict[str, _Entry] = {}
        self._unknown: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}

    async def resolve(self, plaintext: str | None, policy: Policy) -> Principal:
        """The principal for ``plaintext``, or :class:`AuthenticationFailed`.

        Raises :class:`~gateway.errors.ServiceUnavailable` only if the database is needed,
        unreachable, and this key has never been looked up before.
        """
        if not plaintext:
            raise AuthenticationFailed(MISSING_KEY)
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        static_team = policy.static_keys.get(digest)
        if static_team is not None:
            return Principal(static_team, "static:" + digest[:8], None)
        entry = self._known.get(digest) or self._unknown.get(digest)
        if entry is None:
            entry = await self._lookup(digest)
        else:
            now = self._clock()
            if entry.deadline <= now:
                entry = await self._lookup(digest)
            elif entry.refresh_at <= now and digest not in self._inflight:
                self._start_lookup(digest)  # the cached answer serves meanwhile
        return self._admit(entry, policy)

    def invalidate(self, key_hash: str) -> None:
        """Forget a key's cached lookup (after revoking it in this process, say)."""
        self._known.pop(key_hash, None)
        self._unknown.pop(key_hash, None)

    def clear(self) -> None:
        """Forget every cached lookup."""
        self._known.clear()
        self._unknown.clear()

    @property
    def cached_entries(self) -> int:
        """How many lookups are cached (positive and negative)."""
        return len(self._known) + len(self._unknown)

    def _admit(self, entry: _Entry, policy: Policy) -> Principal:
        principal = entry.principal
        if principal is None:
            raise AuthenticationFailed(UNKNOWN_KEY)
        if entry.revoked:
            raise AuthenticationFailed(REVOKED_KEY)
        if entry.expires_at is not None and entry.expires_at <= self._wall_clock():
            raise AuthenticationFailed(EXPIRED_KEY)
        if policy.team(principal.team) is None:
            raise AuthenticationFailed(UNKNOWN_TEAM)
        return principal

    async def _lookup(self, digest: str) -> _Entry:
        task = self._inflight.get(digest) or self._start_lookup(digest)
        return await asyncio.shield(task)

    def _start_lookup(self, digest: str) -> asyncio.Task[_Entry]:
        # The query runs in its own task so that a caller that goes away (client disconnect)
        # does not cancel it for the others waiting on the same key.
        task = asyncio.create_task(self._fetch(digest))
        self._inflight[digest] = task
        task.add_done_callback(functools.partial(self._finished, digest))
        return task

    def _finished(self, digest: str, task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(digest) is task:
            del self._inflight[digest]
        if not task.cancelled():
            task.exception()  # retrieved here, in case every waiter was cancelled meanwhile

    async def _fetch(self, digest: str) -> _Entry:
        try:
            record = await self._store.find_by_hash(digest)
        except ServiceUnavailable:
            stale = self._known.get(digest) or self._unknown.get(digest)
            if stale is None:
                raise
            # The database is down: keep answering as we last knew, and ask again after
            # another ttl_s rather than on every request (which would pile up connect timeouts).
            now = self._clock()
            stale.deadline = now + self._ttl_s
            stale.refresh_at = now + self._ttl_s * REFRESH_AT
            return stale
        entry = self._entry(record)
        self._remember(digest, entry)
        return entry

    def _entry(self, record: KeyRecord | None) -> _Entry:
        now = self._clock()
        deadline, refresh_at = now + self._ttl_s, now + self._ttl_s * REFRESH_AT
        if record is None:
            return _Entry(deadline, refresh_at, None, False, None)
        principal = Principal(record.team, record.id, record.name)
        expires_at = None if record.expires_at is None else record.expires_at.timestamp()
        return _Entry(deadline, refresh_at, principal, record.revoked_at is not None, expires_at)

    def _remember(self, digest: str, entry: _Entry) -> None:
        cache, other = (
            (self._known, self._unknown) if entry.principal else (self._unknown, self._known)
        )
        other.pop(digest, None)
        # Re-inserting moves the key to the end: dict order is then refresh order, and the
        # first key is the one refreshed longest ago, the one to evict.
        cache.pop(digest, None)
        cache[digest] = entry
        while len(cache) > self._max_entries:
            del cache[next(iter(cache))]
