"""The budget and rate-limit contract, shared by the Redis and the in-process implementations.

Every operation is one atomic step on the store (one Lua call in Redis)::

    reserve(request_id, plan, key_id, estimate, timeout_s=)   hold the estimate in every window
    extend(plan, request_id, new_estimate)                     failover to a dearer deployment
    settle(plan, request_id, actual)                           release the hold, charge the usage
    release(plan, request_id)                                  failed before any token: give back
    count_hit(plan, key_id, charge)                            a cache hit: rpm (+ usage if asked)
    reserve_probing(..., probe)                                reserve unless a key holds a value
    charge(plan, key_id, actual)                               usage that was never reserved
    snapshot(plan, key_id)                                     used / reserved / remaining

A request is refused when any window it adds to would pass its limit (used + reserved + amount >
limit); a settled request is charged what it really used, even past the limit. Reservations
expire ``timeout_s`` (+ a margin) after they were made, so a gateway that dies holds nothing for
long; an expired reservation is remembered for ``late_settle_s`` so that a settle arriving late
(a stream that outlived the timeout) still charges the usage.

``reserve_probing`` (Redis only, :attr:`Limiter.probes`) reads a key of the caller's under the
team's hash tag in the same atomic step as a reserve: the prompt cache's entry, so that a cache
miss costs one round trip for the lookup and the reservation together. ``settle`` can likewise
write that key and drop the probe's lock (:class:`Fill`) in its own round trip.

This base class builds the keys and arguments; subclasses only run the four scripts
(``lua/*.lua``, or their Python port in ``memory_limiter.py``) over identical inputs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from gateway.budget.admission import Admission, WindowState
from gateway.budget.plan import UNIT_CODES, BudgetPlan, Charge, LimitSpec
from gateway.budget.windows import WindowClock, WindowKind
from gateway.errors import ServiceUnavailable

Arg = str | int | float | bytes


class BudgetUnavailable(ServiceUnavailable):
    """The budget store (Redis) did not answer. Apply the team's ``on_redis_down``."""

    code = "budget_unavailable"


class Settlement(IntEnum):
    """What ``settle``/``release`` found."""

    NONE = 0  # no such reservation: already settled or released (a no-op), or never made
    DONE = 1
    LATE = 2  # the reservation had expired (its hold was given back): only the usage was charged


@dataclass(frozen=True, slots=True)
class Probe:
    """A key to read before reserving, and the lock to take beside it on a miss.

    Both keys must carry the team's hash tag (``{team:<name>}``), like the budget's own keys.
    """

    key: str
    lock: str
    token: str  # the lock's value: only its holder may drop it
    lock_ms: int
    count_hit: bool  # a hit counts against rpm in the same step (False: the caller charges it)


@dataclass(frozen=True, slots=True)
class Probed:
    """What :meth:`Limiter.reserve_probing` found.

    ``value`` set: the key held it; nothing was reserved (``admission`` is the hit's when
    ``count_hit``, else None). ``value`` None and ``locked``: the lock is the caller's and
    ``admission`` is the reserve's (a refused reserve gave the lock back: ``locked`` is False
    then). Neither: another caller holds the lock; nothing changed.
    """

    value: bytes | None
    admission: Admission | None
    locked: bool


@dataclass(frozen=True, slots=True)
class Fill:
    """After a probed miss: write ``value`` (if any) under the probe key, then drop the lock
    if it still holds ``token``, in the same step as the settle."""

    key: str
    lock: str
    token: str
    value: bytes | None
    ttl_ms: int


class _Layout:
    """The counters of one (plan, key) pair: their key names and the script's static arguments,
    with the keys of the current windows kept until one of those windows ends."""

    __slots__ = (
        "ends",
        "ends_arg",
        "exp",
        "heads",
        "keys",
        "plan",
        "res",
        "spec_arg",
        "specs",
        "valid_from",
        "valid_until",
        "windows",
    )

    def __init__(self, plan: BudgetPlan, key_id: str | None, base: str) -> None:
        self.plan = plan
        specs: list[LimitSpec] = list(plan.team_limits)
        heads = [f"{base}:b:{spec.stem}" for spec in plan.team_limits]
        if key_id is not None:
            specs += plan.key_limits
            heads += [f"{base}:b:key:{key_id}:{spec.stem}" for spec in plan.key_limits]
        self.specs = tuple(specs)
        self.heads = tuple(heads)
        self.windows: tuple[WindowKind, ...] = tuple(spec.window for spec in specs)
        self.spec_arg = ",".join(f"{UNIT_CODES[spec.unit]}{spec.limit}" for spec in specs)
        self.res = f"{base}:b:res"
        self.exp = f"{base}:b:exp"
        self.keys: list[str] = []
        self.ends: tuple[int, ...] = ()
        self.ends_arg = ""
        self.valid_from = float("inf")
        self.valid_until = float("-inf")

    def at(self, now: float, clock: WindowClock) -> None:
        """Point ``keys``/``ends`` at the windows holding ``now`` (a no-op within them)."""
        if self.valid_from <= now < self.valid_until:
            return
        spans = [clock.span(window, now) for window in self.windows]
        # Replaced, never mutated: a caller holding the old lists keeps consistent ones.
        labels = [span.label for span in spans]
        self.keys = [self.res, self.exp, *map(str.__add__, self.heads, labels)]
        self.ends = tuple(span.end for span in spans)
        self.ends_arg = " ".join(str(end) for end in self.ends)
        self.valid_from = max((span.start for span in spans), default=float("-inf"))
        self.valid_until = min((span.end for span in spans), default=float("inf"))


class Limiter(ABC):
    """Budgets and rate limits for every team (see the module docstring for the contract).

    ``now`` arguments are epoch seconds and default to the wall clock; tests pass their own.
    """

    backend = "abstract"
    probes = False  # whether reserve_probing and settle's fill are supported
    _MAX_LAYOUTS = 10_000

    def __init__(
        self,
        prefix: str = "tollgate:",
        *,
        hold_margin_s: float = 30.0,
        late_settle_s: float = 3600.0,
        sweep_batch: int = 16,
        max_hold_s: float = 3600.0,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            # Redis Cluster takes the first {...} as the hash tag; it must be the team's.
            raise ValueError(f"the key prefix {prefix!r} must not contain braces")
        self.prefix = prefix
        self.hold_margin_s = hold_margin_s
        self.late_settle_s = late_settle_s
        self.sweep_batch = sweep_batch
        # A window's counter lives this long after the window ends, so that the settle of any
        # reservation made in it (held up to max_hold_s, then remembered for late_settle_s)
        # still finds it. A settle later than that skips the long-ended window.
        self._counter_life_s = int(max_hold_s + late_settle_s) + 60
        self._clock = WindowClock()
        self._layouts: dict[tuple[str, str | None], _Layout] = {}

    # --- the contract ---------------------------------------------------------------------

    async def reserve(
        self,
        request_id: str,
        plan: BudgetPlan,
        key_id: str | None,
        estimate: Charge,
        *,
        timeout_s: float,
        now: float | None = None,
    ) -> Admission:
        """Hold ``estimate`` in every window of the team's (and the key's) limits, and count the
        request against rpm; refuse, changing nothing, if any window would pass its limit.

        The hold expires ``timeout_s + hold_margin_s`` from now unless settled or released.
        Reserving again under the same id changes nothing and is admitted (``replayed``).
        """
        return await self._admission(
            "r", request_id, plan, key_id, estimate, timeout_s + self.hold_margin_s, now
        )

    async def reserve_probing(
        self,
        request_id: str,
        plan: BudgetPlan,
        key_id: str | None,
        estimate: Charge,
        probe: Probe,
        *,
        timeout_s: float,
        now: float | None = None,
    ) -> Probed:
        """:meth:`reserve`, unless ``probe.key`` holds a value (see :class:`Probed`).

        Only where :attr:`probes` is true, and only for a limited plan (an unlimited one has
        no round trip to share).
        """
        if not self.probes or plan.unlimited:
            raise NotImplementedError("reserve_probing needs a probing store and a limited plan")
        now = time.time() if now is None else now
        layout = self._layout(plan, key_id)
        layout.at(now, self._clock)
        hold_s = timeout_s + self.hold_margin_s
        args = self._admit_args(layout, request_id, now, hold_s, estimate, "r")
        args += [probe.token, probe.lock_ms, "1" if probe.count_hit else "0"]
        value, values = await self._admit_probing([*layout.keys, probe.key, probe.lock], args)
        if not values:
            return Probed(value, None, False)
        amount = Charge() if value is not None else estimate
        admission = Admission(plan.team, layout.specs, layout.ends, values, now, amount)
        return Probed(value, admission, value is None and admission.admitted)

    async def extend(
        self,
        plan: BudgetPlan,
        request_id: str,
        estimate: Charge,
        *,
        timeout_s: float | None = None,
        now: float | None = None,
    ) -> bool:
        """Replace the reservation's amounts with ``estimate`` (all or nothing).

        False, with nothing changed, when an increase does not fit in some window or the
        reservation is gone. ``timeout_s`` also pushes its expiry to ``now + timeout_s + margin``
        (never earlier): extending with the same estimate keeps a long stream's hold alive.
        """
        if plan.unlimited:
            return True
        now = time.time() if now is None else now
        layout = self._layout(plan, None)
        expires = 0.0 if timeout_s is None else now + timeout_s + self.hold_margin_s
        args: list[Arg] = [
            request_id,
            estimate.tokens,
            estimate.nano_usd,
            now,
            expires,
            self.sweep_batch,
            self.late_settle_s,
        ]
        return await self._extend([layout.res, layout.exp], args) == 1

    async def settle(
        self, plan: BudgetPlan, request_id: str, actual: Charge, fill: Fill | None = None
    ) -> Settlement:
        """Release the reservation and charge ``actual`` to the windows it was made in (even past
        their limit). Idempotent: a second settle finds nothing and changes nothing.

        ``fill`` (probing stores only) completes a probed miss in the same step.
        """
        if plan.unlimited and fill is None:
            return Settlement.NONE
        layout = self._layout(plan, None)
        keys = [layout.res, layout.exp]
        args: list[Arg] = [request_id, actual.tokens, actual.nano_usd, "s"]
        if fill is not None:
            if not self.probes:
                raise NotImplementedError("a fill needs a probing store")
            keys += [fill.key, fill.lock]
            args += [fill.token, fill.value or b"", fill.ttl_ms]
        return Settlement(await self._settle(keys, args))

    async def release(self, plan: BudgetPlan, request_id: str) -> Settlement:
        """Give the reservation back, charging nothing (the request failed before any token)."""
        if plan.unlimited:
            return Settlement.NONE
        layout = self._layout(plan, None)
        return Settlement(await self._settle([layout.res, layout.exp], [request_id, 0, 0, "r"]))

    async def count_hit(
        self,
        plan: BudgetPlan,
        key_id: str | None,
        charge: Charge | None = None,
        *,
        now: float | None = None,
    ) -> Admission:
        """A cache hit: count the request against rpm and, when ``charge`` is given, charge it as
        used at once. Refused like a reserve (nothing changed) if a window cannot take it."""
        return await self._admission("h", "", plan, key_id, charge or Charge(), 0.0, now)

    async def charge(
        self, plan: BudgetPlan, key_id: str | None, actual: Charge, *, now: float | None = None
    ) -> None:
        """Add usage that was never reserved (served while the store was down under
        ``fail_open``): no check, no request counted."""
        await self._admission("f", "", plan, key_id, actual, 0.0, now)

    async def snapshot(
        self, plan: BudgetPlan, key_id: str | None = None, *, now: float | None = None
    ) -> list[WindowState]:
        """Every limit of the team (and of ``key_id``'s budget) in its current window."""
        now = time.time() if now is None else now
        layout = self._layout(plan, key_id)
        if not layout.specs:
            return []
        keys = [layout.res, layout.exp]
        spans = []
        for head, window in zip(layout.heads, layout.windows, strict=True):
            span = self._clock.span(window, now)
            spans.append(span)
            keys.append(head + span.label)
        values = await self._read(keys, [now, 10_000, self.late_settle_s])
        return [
            WindowState(
                spec,
                key_id if spec.scope == "key" else None,
                span.start,
                span.end,
                int(values[2 * i]),
                int(values[2 * i + 1]),
            )
            for i, (spec, span) in enumerate(zip(layout.specs, spans, strict=True))
        ]

    # --- health, for /readyz ----------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        """The readiness check's entry for the budget store."""
        return {"ok": self.healthy, "backend": self.backend}

    # --- shared plumbing --------------------------------------------------------------------

    def team_base(self, team: str) -> str:
        """Where a team's keys start: ``<prefix>{team:<name>}`` (the braces are the hash tag)."""
        return f"{self.prefix}{{team:{team}}}"

    def _layout(self, plan: BudgetPlan, key_id: str | None) -> _Layout:
        cache_key = (plan.team, key_id)
        found = self._layouts.get(cache_key)
        if found is None or found.plan is not plan:
            if len(self._layouts) >= self._MAX_LAYOUTS:
                self._layouts.clear()
            found = _Layout(plan, key_id, self.team_base(plan.team))
            self._layouts[cache_key] = found
        return found

    async def _admission(
        self,
        mode: str,
        request_id: str,
        plan: BudgetPlan,
        key_id: str | None,
        amount: Charge,
        hold_s: float,
        now: float | None,
    ) -> Admission:
        if plan.unlimited:
            return Admission.unlimited(plan)
        now = time.time() if now is None else now
        layout = self._layout(plan, key_id)
        layout.at(now, self._clock)
        keys, ends = layout.keys, layout.ends
        values = await self._admit(
            keys, self._admit_args(layout, request_id, now, hold_s, amount, mode)
        )
        return Admission(plan.team, layout.specs, ends, values, now, amount)

    def _admit_args(
        self, layout: _Layout, request_id: str, now: float, hold_s: float, amount: Charge, mode: str
    ) -> list[Arg]:
        return [
            request_id,
            now,
            now + hold_s,
            amount.tokens,
            amount.nano_usd,
            mode,
            self.sweep_batch,
            self.late_settle_s,
            self._counter_life_s,
            layout.spec_arg,
            layout.ends_arg,
        ]

    # --- the store: four scripts over identical inputs (see lua/*.lua for the layouts) ------

    @abstractmethod
    async def _admit(self, keys: list[str], args: list[Arg]) -> Sequence[int | bytes]: ...

    async def _admit_probing(
        self, keys: list[str], args: list[Arg]
    ) -> tuple[bytes | None, Sequence[int | bytes]]:
        """admit.lua with a probe: (the probe key's value, the admission's values or ())."""
        raise NotImplementedError

    @abstractmethod
    async def _settle(self, keys: list[str], args: list[Arg]) -> int: ...

    @abstractmethod
    async def _extend(self, keys: list[str], args: list[Arg]) -> int: ...

    @abstractmethod
    async def _read(self, keys: list[str], args: list[Arg]) -> list[int]: ...
