"""A route's goodput over a recent window: requests, SLO met and missed, errors, probes.

Counts fade with a time half-life (``route_half_life_s``, 60 s), forward-decayed like the
deployment stats in ``stats.py``, and merge across gateways the same way.
"""

from __future__ import annotations

import math
from typing import Any, Final

# Route fields: requests, SLO met, SLO missed, errors, output tokens (sum), output tokens
# (count), probes, decisions predicted to miss.
ROUTE_SIZE: Final = 8
R_REQUESTS, R_MET, R_MISSED, R_ERRORS, R_OUT_SUM, R_OUT_N, R_PROBES, R_PREDICTED_MISS = range(8)
_RESCALE_AT: Final = 1e120
_MAX_EXPONENT: Final = 200.0


class RouteStats:
    """A route's goodput, errors and output sizes over a recent window (time-decayed)."""

    __slots__ = (
        "_grow_per_s",
        "local",
        "merged",
        "remote_served",
        "scale",
        "served",
        "totals",
        "updated",
    )

    def __init__(self, half_life_s: float, now: float) -> None:
        self.local = [0.0] * ROUTE_SIZE
        self.merged = [0.0] * ROUTE_SIZE
        self.served: dict[str, float] = {}  # local answers per deployment (forward-scaled)
        self.remote_served: dict[str, float] = {}
        self.scale = 1.0
        self.updated = now
        self._grow_per_s = math.log(2.0) / half_life_s
        # Since this process started (local only): plain counts for dashboards and tests.
        self.totals = [0] * ROUTE_SIZE

    def advance(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0.0:
            self.updated = now
            exponent = elapsed * self._grow_per_s
            if exponent < _MAX_EXPONENT:
                self.scale *= math.exp(exponent)
                if self.scale <= _RESCALE_AT:
                    return
                factor = 1.0 / self.scale
            else:  # a long silence: shrink what is stored instead of overflowing the scale
                factor = math.exp(-exponent) / self.scale
            self.local = [value * factor for value in self.local]
            self.merged = [value * factor for value in self.merged]
            self.served = {key: value * factor for key, value in self.served.items()}
            self.remote_served = {key: value * factor for key, value in self.remote_served.items()}
            self.scale = 1.0

    def add(self, index: int, amount: float = 1.0) -> None:
        value = amount * self.scale
        self.local[index] += value
        self.merged[index] += value
        self.totals[index] += int(amount)

    def mean_output_tokens(self) -> float | None:
        if self.merged[R_OUT_N] <= 0.0:
            return None
        return self.merged[R_OUT_SUM] / self.merged[R_OUT_N]

    def view(self, route: str, half_life_s: float) -> dict[str, Any]:
        """The admin view (call ``advance`` first)."""
        merged, scale = self.merged, self.scale
        judged = merged[R_MET] + merged[R_MISSED]
        served = dict(self.served)
        for name, value in self.remote_served.items():
            served[name] = served.get(name, 0.0) + value
        served_total = sum(served.values())
        return {
            "route": route,
            "window_half_life_s": half_life_s,
            "requests": round(merged[R_REQUESTS] / scale, 3),
            "goodput": round(merged[R_MET] / judged, 4) if judged > 0.0 else None,
            "slo_met": round(merged[R_MET] / scale, 3),
            "slo_missed": round(merged[R_MISSED] / scale, 3),
            "errors": round(merged[R_ERRORS] / scale, 3),
            "probes": round(merged[R_PROBES] / scale, 3),
            "predicted_misses": round(merged[R_PREDICTED_MISS] / scale, 3),
            "mean_output_tokens": self.mean_output_tokens(),
            "traffic_share": {
                name: round(value / served_total, 4) for name, value in sorted(served.items())
            }
            if served_total > 0.0
            else {},
            "since_start": {
                "requests": self.totals[R_REQUESTS],
                "slo_met": self.totals[R_MET],
                "slo_missed": self.totals[R_MISSED],
                "errors": self.totals[R_ERRORS],
                "probes": self.totals[R_PROBES],
                "predicted_misses": self.totals[R_PREDICTED_MISS],
            },
        }
