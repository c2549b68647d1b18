"""What the router hands the pipeline (:class:`RoutePlan`) and what it reads of a route.

The route is described by protocols rather than by importing ``gateway.policy``: domain packages
do not import each other, and the policy's pydantic ``Route``/``Slo`` fit these shapes as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import InvalidRequest


class UnitPrice(Protocol):
    """A deployment's price per token (``gateway.pricing.Price`` fits)."""

    @property
    def input_usd_per_token(self) -> float: ...
    @property
    def output_usd_per_token(self) -> float: ...


# Deployment -> its price: the pricing package's table, passed as it is.
Prices = Mapping[str, UnitPrice]


class SloSpec(Protocol):
    """What the router reads of a route's SLO (``gateway.policy.schema.Slo`` fits)."""

    @property
    def ttft_ms(self) -> float | None: ...
    @property
    def total_ms(self) -> float | None: ...
    @property
    def percentile(self) -> float: ...


class RouteSpec(Protocol):
    """What the router reads of a route (``gateway.policy.schema.Route`` fits).

    A protocol rather than an import: domain packages do not import each other.
    """

    @property
    def candidates(self) -> Sequence[str]: ...
    @property
    def slo(self) -> SloSpec | None: ...
    @property
    def strategy(self) -> str: ...
    @property
    def weights(self) -> Mapping[str, float]: ...
    @property
    def retries(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One deployment to try, with what the router expected of it."""

    deployment: str
    cost_usd: float | None  # estimated for this request; None when no price is known
    ttft_s: float | None  # predicted at the route's percentile; None before any observation
    total_s: float | None
    meets_slo: bool
    probe: bool = False


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The attempts for one request, in order, and the targets they were chosen against."""

    route: str
    strategy: str
    attempts: tuple[Attempt, ...]
    ttft_target_s: float | None
    total_target_s: float | None
    percentile: float
    predicted_miss: bool  # no candidate was predicted to meet the target
    probe: bool  # the first attempt is an exploration probe
    pinned: bool = False

    def met(self, ttft_s: float | None, total_s: float | None) -> bool | None:
        """Did a request with these client-side timings meet its target? None: no target."""
        if self.ttft_target_s is None and self.total_target_s is None:
            return None
        if self.ttft_target_s is not None and (ttft_s is None or ttft_s > self.ttft_target_s):
            return False
        return not (
            self.total_target_s is not None and (total_s is None or total_s > self.total_target_s)
        )


def parse_ttft_override(value: str | None) -> float | None:
    """The x-tollgate-slo-ttft-ms header as milliseconds; :class:`InvalidRequest` if malformed."""
    if value is None:
        return None
    try:
        parsed = float(value)
    except ValueError:
        parsed = math.nan
    if not math.isfinite(parsed) or parsed <= 0:
        raise InvalidRequest(
            f"x-tollgate-slo-ttft-ms must be a positive number of milliseconds, not {value!r}.",
            param="x-tollgate-slo-ttft-ms",
            code="invalid_header",
        )
    return parsed


def tightened(route_target_s: float | None, override_ms: float | None) -> float | None:
    """The route's TTFT target, tightened (never loosened) by a request's own."""
    if override_ms is None:
        return route_target_s
    override_s = override_ms / 1000.0
    return override_s if route_target_s is None else min(route_target_s, override_s)
