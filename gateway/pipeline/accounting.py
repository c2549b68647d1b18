"""One request's budget hold: reserve, extend on failover, then settle or release, once.

The budget store may be away (Redis down): the team's ``on_redis_down`` decides. ``fail_closed``
refuses with 503; ``fail_open`` serves without a hold and charges the usage afterwards if the
store is back by then. Either way the gateway answers within its own timeouts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine
from typing import Any

from gateway.budget import (
    Admission,
    BudgetPlan,
    BudgetUnavailable,
    Charge,
    Fill,
    Limiter,
    Probe,
    Probed,
)
from gateway.record import RequestRecord


class Hold:
    """The budget side of one request.

    The rate-limit headers of its admission are read with :meth:`limit_headers` when the answer
    is about to go out, not as the admission comes back: formatting them (a few hundred bytecode
    instructions) would otherwise sit between Redis's reply and the upstream call."""

    __slots__ = ("_admission", "_limiter", "_plan", "_record", "held", "unenforced")

    def __init__(self, limiter: Limiter, plan: BudgetPlan, record: RequestRecord) -> None:
        self._limiter = limiter
        self._plan = plan
        self._record = record
        self.held: Charge | None = None  # what is reserved right now
        self.unenforced = False  # serving without a hold (fail_open while the store is away)
        self._admission: Admission | None = None  # the last one admitted, for its headers

    def limit_headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers from the last admission (none without one)."""
        return {} if self._admission is None else self._admission.headers()

    async def reserve(self, estimate: Charge, timeout_s: float) -> None:
        """Hold ``estimate``. Raises the 429 (or 503) to send."""
        record = self._record
        try:
            admission = await self._limiter.reserve(
                record.request_id, self._plan, record.key_id, estimate, timeout_s=timeout_s
            )
        except BudgetUnavailable as exc:
            self._outage(exc)
            return
        if not admission.admitted:
            raise admission.error()
        self.held = estimate
        self._admission = admission

    @property
    def probes(self) -> bool:
        """Whether :meth:`reserve_probing` can carry a cache lookup (Redis, a limited plan)."""
        return self._limiter.probes and not self._plan.unlimited

    async def reserve_probing(
        self, estimate: Charge, timeout_s: float, probe: Probe
    ) -> Probed | None:
        """:meth:`reserve` unless ``probe.key`` holds a value, in one round trip: what was found
        (None when the store did not answer; the team's ``on_redis_down`` applied). Raises the
        429 to send, for a refused reserve or hit."""
        record = self._record
        try:
            found = await self._limiter.reserve_probing(
                record.request_id,
                self._plan,
                record.key_id,
                estimate,
                probe,
                timeout_s=timeout_s,
            )
        except BudgetUnavailable as exc:
            self._outage(exc)
            return None
        admission = found.admission
        if admission is None:
            return found
        if not admission.admitted:
            raise admission.error()
        if found.locked:
            self.held = estimate
        self._admission = admission
        return found

    async def count_hit(self, charge: Charge | None) -> None:
        """A cache hit: rpm (and, with ``count_hits``, the tokens) without a hold."""
        try:
            admission = await self._limiter.count_hit(self._plan, self._record.key_id, charge)
        except BudgetUnavailable as exc:
            self._outage(exc)
            return
        if not admission.admitted:
            raise admission.error()
        self._admission = admission

    async def extend(self, estimate: Charge, timeout_s: float) -> bool:
        """Raise the hold for a dearer candidate; False when the budget cannot cover it."""
        if self.held is None or self.unenforced:
            return True
        if estimate.tokens <= self.held.tokens and estimate.nano_usd <= self.held.nano_usd:
            return True
        try:
            grown = await self._limiter.extend(
                self._plan, self._record.request_id, estimate, timeout_s=timeout_s
            )
        except BudgetUnavailable as exc:
            self._outage(exc)
            return True
        if grown:
            self.held = estimate
        return grown

    async def settle(self, actual: Charge, fill: Fill | None = None) -> bool:
        """Charge what was used and drop the hold (idempotent by request id in the store).

        ``fill`` rides along when there is a hold to settle; True when it was carried out."""
        held, self.held = self.held, None
        # An outage is logged by the limiter. The hold then expires by itself; the ledger keeps
        # the usage and `tollgate reconcile` shows the difference.
        with contextlib.suppress(BudgetUnavailable):
            if held is not None:
                await self._limiter.settle(self._plan, self._record.request_id, actual, fill)
                return fill is not None
            if self.unenforced and (actual.tokens or actual.nano_usd):
                await self._limiter.charge(self._plan, self._record.key_id, actual)
        return False

    def release(self) -> Coroutine[Any, Any, None]:
        """Nothing was generated: nothing is charged, and the record says so at once (the
        ledger row is written from it); the returned coroutine gives the hold back."""
        record = self._record
        record.prompt_tokens = record.completion_tokens = record.cached_tokens = 0
        record.cost_usd = 0.0
        held, self.held = self.held, None
        return self._give_back(held is not None)

    async def _give_back(self, held: bool) -> None:
        if not held:
            return
        # An outage is logged by the limiter; the hold then expires by itself.
        with contextlib.suppress(BudgetUnavailable):
            await self._limiter.release(self._plan, self._record.request_id)

    async def refresh(self, timeout_s: float) -> None:
        """Keep a long stream's hold from lapsing (it would still be charged when it ends, but
        meanwhile others could spend what it holds)."""
        if self.held is None:
            return
        with contextlib.suppress(BudgetUnavailable):  # logged by the limiter
            await self._limiter.extend(
                self._plan, self._record.request_id, self.held, timeout_s=timeout_s
            )

    def _outage(self, error: BudgetUnavailable) -> None:
        # The limiter logs outages (once per interval); here only the team's mode is applied.
        if self._plan.on_redis_down == "fail_closed":
            raise error
        self.unenforced = True
        self._record.extra["budget"] = "unenforced"
