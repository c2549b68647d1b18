"""One upstream attempt as the router learns from it: timings, outcome, breaker, goodput."""

from __future__ import annotations

import time

from gateway.errors import UpstreamError
from gateway.record import RequestRecord
from gateway.routing import Breakers, RoutePlan, RoutingStats


class Attempt:
    """Every :meth:`RoutingStats.started` is matched by exactly one ``finished``: this object
    makes that so. Timings are the attempt's own (from its start), goodput the client's."""

    __slots__ = (
        "_breakers",
        "_done",
        "_plan",
        "_record",
        "_stats",
        "deployment",
        "started",
        "ttft_s",
    )

    def __init__(
        self,
        stats: RoutingStats,
        breakers: Breakers,
        plan: RoutePlan,
        record: RequestRecord,
        deployment: str,
    ) -> None:
        self._stats = stats
        self._breakers = breakers
        self._plan = plan
        self._record = record
        self.deployment = deployment
        self._done = False
        self.ttft_s: float | None = None
        stats.started(deployment)
        self.started = time.perf_counter()

    def first_byte(self) -> None:
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self.started

    def failed(self, error: UpstreamError) -> None:
        """The upstream failed (before or during the answer)."""
        if self._done:
            return
        self._done = True
        self._stats.finished(
            self._record.route,
            self.deployment,
            self._record.replica,
            ok=False,
            total_s=time.perf_counter() - self.started,
            error_kind=error.code,
        )
        retry_after = error.retry_after_s if error.status == 429 else None
        self._breakers.failure(self.deployment, retry_after_s=retry_after)
        has_target = self._plan.ttft_target_s is not None or self._plan.total_target_s is not None
        # A failed request missed its route's target; a route without one says nothing.
        self._record.slo_met = False if has_target else None

    def succeeded(self, output_tokens: int, *, complete: bool = True) -> None:
        """The upstream answered. ``complete`` is False when the client left first (the timing
        of the whole answer is then unknown, and the request says nothing about goodput)."""
        if self._done:
            return
        self._done = True
        record = self._record
        self.first_byte()
        total_s = time.perf_counter() - self.started if complete else None
        met = None
        if complete and record.ttft_ms is not None and record.total_ms is not None:
            met = self._plan.met(record.ttft_ms / 1000, record.total_ms / 1000)
        record.slo_met = met
        self._stats.finished(
            record.route,
            self.deployment,
            record.replica,
            ok=True,
            ttft_s=self.ttft_s,
            total_s=total_s,
            output_tokens=output_tokens,
        )
        self._breakers.success(self.deployment)
