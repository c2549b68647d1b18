"""The prompt cache as the pipeline sees it: plan, look up, store (or abandon), replay.

One :class:`PromptCache` per process (built by the app's lifespan), one :class:`CachePlan` per
request::

    plan = cache.plan(document, route, endpoint, body, headers, team)   # pure; None: no caching
    hit = await cache.lookup(plan)       # one store round trip (in-process followers: none)
    if hit: serve cache.replay_json(hit) / cache.replay_stream(hit, ...)
    else:   call upstream; then pending = cache.finish(plan, entry_bytes_or_None) before
            answering and await cache.write(pending) after it (cache.store does both),
            or cache.abandon(plan) when it failed

Probing (``lookup(plan, probe=True)``): a leader's Redis read is left to the caller, who does it
in the same round trip as the budget's reserve (``probe_token``), then hands the outcome to
:meth:`PromptCache.probed`. The pending write of a probed miss can likewise ride along with the
budget's settle (``PendingWrite.beside_budget``).

Single flight: a miss that will store leads the flight for its key and its identical
contemporaries follow it (they get its entry without a store round trip). With Redis, the leader
also takes a lock beside the entry in the same Lua call as the read, so leaders on other replicas
poll the entry instead of calling upstream; if the lock holder fails or vanishes, a poller takes
the lock over and calls upstream itself. The lock lives at most the route's ``timeout_s`` (the
same bound as an in-process wait): a replica that dies holding it delays that key elsewhere by no
more than that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.cache import entry as entries
from gateway.cache.assemble import StreamAssembler
from gateway.cache.entry import CacheEntry
from gateway.cache.flight import SingleFlight, Ticket
from gateway.cache.keys import cache_key, lock_key, request_hash
from gateway.cache.policy import (
    BYPASS,
    HIT,
    MISS,
    CacheDecision,
    CacheSettings,
    DocumentLike,
    RouteCacheTable,
    decide,
)
from gateway.cache.replay import replay_json, replay_stream
from gateway.cache.store import CacheStore, MemoryCacheStore, RedisCacheStore
from gateway.ids import unique_ids

POLL_S = 0.02  # how often a replica waiting on another replica's leader looks for the entry


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """An entry (or only a lock release) still to reach the store; see :meth:`PromptCache.write`."""

    key: str
    lock: str
    token: str | None  # the single-flight lock to drop if still ours (None: no lock held)
    value: bytes | None
    ttl_ms: int
    # The key is the team's (its hash tag): the budget's settle can carry this write.
    beside_budget: bool
    ticket: Ticket | None  # a lingering flight, forgotten once the write is done


class CachePlan:
    """One request's use of the cache; ``status`` is the ``x-tollgate-cache`` header value."""

    __slots__ = (
        "decision",
        "hit",
        "key",
        "kind",
        "lock_token",
        "probe_token",
        "settings",
        "status",
        "ticket",
    )

    def __init__(
        self, settings: CacheSettings, decision: CacheDecision, key: str, kind: int
    ) -> None:
        self.settings = settings
        self.decision = decision
        self.key = key
        self.kind = kind
        self.status = MISS if decision.read else BYPASS
        self.hit: CacheEntry | None = None
        self.ticket: Ticket | None = None
        self.lock_token: str | None = None
        # Set by lookup(probe=True): the lock token to read the entry with, in the caller's
        # own round trip; cleared by probed().
        self.probe_token: str | None = None

    @property
    def lock(self) -> str:
        """The single-flight lock's key, beside the entry."""
        return lock_key(self.key)

    @property
    def lock_ms(self) -> int:
        return _ms(self.settings.wait_s)

    @property
    def keyed(self) -> bool:
        """Whether the request reads or writes the store, so needs a key (a body hash)."""
        return self.decision.read or self.decision.write

    @property
    def writes(self) -> bool:
        """Whether an answer to this request is to be stored (build an entry only then)."""
        return self.decision.write and self.hit is None


class PromptCache:
    """The cache: a store, single flight, and each policy's per-route settings."""

    def __init__(self, store: CacheStore, prefix: str, *, poll_s: float = POLL_S) -> None:
        self.backend = store
        self.prefix = prefix
        self.poll_s = poll_s
        self.flight = SingleFlight()
        self._locks = store if isinstance(store, RedisCacheStore) else None
        self._table: RouteCacheTable | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._lock_tokens = unique_ids()

    @classmethod
    def build(
        cls, redis: aioredis.Redis | None, prefix: str, *, memory_max_bytes: int = 64 << 20
    ) -> PromptCache:
        """Redis when the state store has a client, else an in-process LRU."""
        store: CacheStore = (
            RedisCacheStore(redis) if redis is not None else MemoryCacheStore(memory_max_bytes)
        )
        return cls(store, prefix)

    def settings(self, document: DocumentLike, route: str) -> CacheSettings | None:
        """The route's effective settings under ``document`` (resolved once per policy)."""
        table = self._table
        if table is None or table.document is not document:
            table = self._table = RouteCacheTable(document)
        return table.get(route)

    def plan(
        self,
        document: DocumentLike,
        route: str,
        endpoint: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        team: str,
    ) -> CachePlan | None:
        """This request's plan; None when its route does not cache (send no cache header).

        Pure apart from the per-policy memo. Raises ``InvalidRequest`` for a bad
        ``x-tollgate-cache-ttl``.
        """
        plan = self._unkeyed(document, route, endpoint, body, headers)
        if plan is not None and plan.keyed:
            plan.key = self._key(plan, team, request_hash(route, str(endpoint), body))
        return plan

    async def plan_off_loop(
        self,
        document: DocumentLike,
        route: str,
        endpoint: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        team: str,
    ) -> CachePlan | None:
        """:meth:`plan`, hashing the body in a worker thread: for a body big enough that its
        hash would hold the event loop (SHA-256 lets go of the GIL while it hashes, 0.3 ms for a
        100k-token prompt; serialising it first keeps the GIL, but for ~15 µs)."""
        plan = self._unkeyed(document, route, endpoint, body, headers)
        if plan is not None and plan.keyed:
            digest = await asyncio.to_thread(request_hash, route, str(endpoint), body)
            plan.key = self._key(plan, team, digest)
        return plan

    def _unkeyed(
        self,
        document: DocumentLike,
        route: str,
        endpoint: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> CachePlan | None:
        settings = self.settings(document, route)
        if settings is None:
            return None
        decision = decide(settings, endpoint, headers, body)
        return CachePlan(settings, decision, "", entries.kind_of(endpoint))

    def _key(self, plan: CachePlan, team: str, digest: str) -> str:
        return cache_key(self.prefix, plan.settings.scope, team, digest)

    async def lookup(self, plan: CachePlan, *, probe: bool = False) -> CacheEntry | None:
        """The cached answer, or None: then call upstream and :meth:`store` or :meth:`abandon`.

        Waits (at most the route's ``timeout_s``) for an identical request already in flight.
        Never raises for the store's sake.

        ``probe``: when this request leads its flight, has a team-scoped key and Redis holds
        the cache, return None without reading Redis and leave ``plan.probe_token`` set: the
        caller reads the entry (taking the lock) in its own round trip, then calls
        :meth:`probed`.
        """
        if not plan.decision.read:
            return None
        if not plan.decision.write:
            raw = await self.backend.get(plan.key)
            if raw is None and (follower := self.flight.follow(plan.key)) is not None:
                raw = await follower.wait(plan.settings.wait_s)
            return self._found(plan, raw)
        ticket = self.flight.join(plan.key)
        if not ticket.leader:
            return self._found(plan, await ticket.wait(plan.settings.wait_s))
        plan.ticket = ticket  # ours to end: here on a hit, else by store() or abandon()
        locks = self._locks
        if probe and locks is not None and locks.available and plan.settings.scope == "team":
            plan.probe_token = next(self._lock_tokens)
            return None
        return await self._lead(plan, ticket)

    async def probed(
        self, plan: CachePlan, value: bytes | None, *, locked: bool, busy: bool
    ) -> CacheEntry | None:
        """The outcome of the caller's probe: ``value`` (a hit), or a miss with the lock taken
        (``locked``), held by another replica (``busy``: wait for its entry as :meth:`lookup`
        does), or neither (Redis did not answer: go ahead alone)."""
        token, plan.probe_token = plan.probe_token, None
        ticket = plan.ticket
        if token is None or ticket is None:
            return None
        if busy:
            return await self._lead(plan, ticket, first=(None, False))
        if locked:
            plan.lock_token = token
        return self._leader_found(plan, ticket, value)

    async def lookup_unprobed(self, plan: CachePlan) -> CacheEntry | None:
        """Look up as :meth:`lookup` would have, for a plan whose probe never ran (the caller
        made no reservation to carry it)."""
        ticket = plan.ticket
        if plan.probe_token is None or ticket is None:
            return None
        plan.probe_token = None
        return await self._lead(plan, ticket)

    async def _lead(
        self, plan: CachePlan, ticket: Ticket, first: tuple[bytes | None, bool] | None = None
    ) -> CacheEntry | None:
        """The flight leader's read of the shared store (see :meth:`_read_as_leader`)."""
        try:
            raw = await self._read_as_leader(plan, first)
        except BaseException:
            self.abandon(plan)
            raise
        return self._leader_found(plan, ticket, raw)

    def _leader_found(
        self, plan: CachePlan, ticket: Ticket, raw: bytes | None
    ) -> CacheEntry | None:
        """A leader's read: on a hit, its followers get the entry and the flight ends."""
        found = self._found(plan, raw)
        if found is not None:
            ticket.finish(raw)
            plan.ticket = None
        return found

    async def _read_as_leader(
        self, plan: CachePlan, first: tuple[bytes | None, bool] | None = None
    ) -> bytes | None:
        locks = self._locks
        if locks is None:
            return await self.backend.get(plan.key)
        token = next(self._lock_tokens)
        lock = plan.lock
        lock_s = plan.settings.wait_s
        deadline = time.monotonic() + plan.settings.wait_s
        if first is None:
            raw, held = await locks.claim(plan.key, lock, token, lock_s)
        else:
            raw, held = first  # the caller's probe already read it once
        # Another replica is calling upstream for this key: wait for its entry, or for its
        # lock to go (it failed), in which case the claim makes us the one to call upstream.
        while raw is None and not held and time.monotonic() < deadline:
            await asyncio.sleep(self.poll_s)
            raw, held = await locks.claim(plan.key, lock, token, lock_s)
        # (None, True) also stands for "Redis is down": there is no lock to release then.
        if held and locks.available:
            plan.lock_token = token
        return raw

    def _found(self, plan: CachePlan, raw: bytes | None) -> CacheEntry | None:
        found = None if raw is None else entries.decode(raw)
        if found is not None:
            plan.hit = found
            plan.status = HIT
        return found

    async def store(self, plan: CachePlan, entry: bytes | None) -> None:
        """:meth:`finish` and :meth:`write` in one (the write awaited)."""
        pending = self.finish(plan, entry)
        if pending is not None:
            await self.write(pending)

    def finish(self, plan: CachePlan, entry: bytes | None) -> PendingWrite | None:
        """Keep ``entry`` (from :meth:`entry_from_json` / :meth:`entry_from_stream`; None when
        there is nothing to keep) and end the flight, before the response completes.

        Followers get the entry at once; identical requests arriving until the write is done
        get it from this process too. What is left for a shared store comes back as a
        :class:`PendingWrite`, for :meth:`write` (or the budget's settle) after the response.
        """
        keep = entry
        if keep is not None and (not plan.writes or len(keep) > plan.settings.max_entry_bytes):
            keep = None
        token, plan.lock_token = plan.lock_token, None
        ticket, plan.ticket = plan.ticket, None
        if isinstance(self.backend, MemoryCacheStore):
            if keep is not None:
                self.backend.put_now(plan.key, keep, plan.decision.ttl_s)
            if ticket is not None:
                ticket.finish(keep)
            return None
        # Followers first: they take the bytes from memory, not from the store.
        if ticket is not None:
            ticket.finish(keep, linger=True)
        if token is None and keep is None:
            return None
        return PendingWrite(
            plan.key,
            plan.lock,
            token,
            keep,
            _ms(plan.decision.ttl_s),
            beside_budget=token is not None and plan.settings.scope == "team",
            ticket=ticket if keep is not None else None,
        )

    async def write(self, pending: PendingWrite) -> None:
        """Put a pending entry in the store and drop its lock (if still ours); never raises
        for the store's sake."""
        try:
            if pending.token is not None and self._locks is not None:
                await self._locks.release(
                    pending.key, pending.lock, pending.token, pending.value, pending.ttl_ms / 1000
                )
            elif pending.value is not None:
                await self.backend.put(pending.key, pending.value, pending.ttl_ms / 1000)
        finally:
            self.written(pending)

    @staticmethod
    def written(pending: PendingWrite) -> None:
        """The pending write is done (by :meth:`write` or along with the budget's settle)."""
        if pending.ticket is not None:
            pending.ticket.forget()

    def abandon(self, plan: CachePlan) -> None:
        """No answer to keep (upstream failed, client left): release the followers now.

        Synchronous so it can run in ``finally`` blocks; a Redis lock is released in the
        background (it would expire on its own anyway).
        """
        if plan.ticket is not None:
            plan.ticket.finish(None)
            plan.ticket = None
        plan.probe_token = None  # a probe's lock, if taken, is ours only once probed() said so
        token, plan.lock_token = plan.lock_token, None
        if token is not None and self._locks is not None:
            task = asyncio.get_running_loop().create_task(
                self._locks.release(plan.key, plan.lock, token)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # --- building entries and serving hits ---------------------------------------------------

    @staticmethod
    def entry_from_json(
        plan: CachePlan,
        body: bytes,
        *,
        deployment: str,
        cost_usd: float,
        usage: tuple[int, int, int] | None = None,
    ) -> bytes | None:
        """The entry for a 2xx JSON answer (None: not complete, or not to be written)."""
        if not plan.writes:
            return None
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(answer, dict):
            return None
        return entries.from_answer(
            answer, plan.kind, deployment=deployment, cost_usd=cost_usd, usage=usage
        )

    @staticmethod
    def assembler(plan: CachePlan) -> StreamAssembler | None:
        """A stream assembler for a streamed miss to be stored; None when nothing is stored."""
        if not plan.writes:
            return None
        return StreamAssembler(plan.kind, plan.settings.max_entry_bytes)

    @staticmethod
    def entry_from_stream(
        plan: CachePlan,
        assembler: StreamAssembler,
        *,
        deployment: str,
        cost_usd: float,
        usage: tuple[int, int, int] | None = None,
    ) -> bytes | None:
        """The entry for a stream that completed normally; None for a cut or failed one."""
        answer = assembler.answer()
        if answer is None:
            return None
        return entries.from_answer(
            answer, plan.kind, deployment=deployment, cost_usd=cost_usd, usage=usage
        )

    @staticmethod
    def replay_json(hit: CacheEntry) -> bytes:
        """The hit as the JSON body to send (new ``id`` and ``created``)."""
        return replay_json(hit)

    @staticmethod
    def replay_stream(hit: CacheEntry, *, include_usage: bool) -> bytes:
        """The hit as the complete SSE body to send, ``data: [DONE]`` included."""
        return replay_stream(hit, include_usage=include_usage)

    @staticmethod
    async def stream_events(hit: CacheEntry, *, include_usage: bool) -> AsyncIterator[bytes]:
        """The hit's SSE body as a one-item async iterator (what ``StreamResult`` takes)."""
        yield replay_stream(hit, include_usage=include_usage)

    async def aclose(self) -> None:
        """Let background lock releases finish (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
