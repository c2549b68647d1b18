"""Single flight in one process: identical requests in flight share the first one's answer.

The first request to miss a key becomes its leader and calls upstream; requests for the same key
that arrive meanwhile become followers and wait (bounded) for the leader's outcome: the entry it
stored, or None when it failed or its answer could not be kept, in which case they proceed on
their own. The leader must always :meth:`Ticket.finish`, success or not (``finally``), else its
followers wait out their bound.
"""

from __future__ import annotations

import asyncio


class Ticket:
    """One request's place in a flight: the leader's (``leader``) or a follower's."""

    __slots__ = ("_flights", "_future", "key", "leader")

    def __init__(
        self,
        flights: dict[str, asyncio.Future[bytes | None]],
        key: str,
        future: asyncio.Future[bytes | None],
        leader: bool,
    ) -> None:
        self._flights = flights
        self._future = future
        self.key = key
        self.leader = leader

    def finish(self, entry: bytes | None, *, linger: bool = False) -> None:
        """Leader only: hand ``entry`` (None = failed) to the followers and end the flight.

        ``linger`` keeps a finished flight with an entry joinable, so identical requests get
        that entry at once, until :meth:`forget`: while the entry's write to a shared store is
        still on its way, they would otherwise miss it there. Idempotent, so an error path may
        call it again with None without harm.
        """
        if not self.leader or self._future.done():
            return
        if not (linger and entry is not None):
            self.forget()
        self._future.set_result(entry)

    def forget(self) -> None:
        """End a lingering flight (its entry is in the store now, or never will be)."""
        if self._flights.get(self.key) is self._future:
            del self._flights[self.key]

    async def wait(self, timeout_s: float) -> bytes | None:
        """Follower only: the leader's entry, or None if it failed or took over ``timeout_s``."""
        try:
            # Shielded: a follower that goes away (cancelled) must not cancel the shared future.
            return await asyncio.wait_for(asyncio.shield(self._future), timeout_s)
        except TimeoutError:
            return None


class SingleFlight:
    """The flights in progress in this process, one future per key."""

    __slots__ = ("_flights",)

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[bytes | None]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: str) -> Ticket:
        """Lead the flight for ``key`` if none is in progress, else follow the one that is."""
        future = self._flights.get(key)
        if future is not None:
            return Ticket(self._flights, key, future, leader=False)
        future = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return Ticket(self._flights, key, future, leader=True)

    def follow(self, key: str) -> Ticket | None:
        """Follow the flight for ``key`` if one is in progress (a request that will not store)."""
        future = self._flights.get(key)
        return None if future is None else Ticket(self._flights, key, future, leader=False)
