"""Pure statistics for the harness: percentiles, summaries, added latency, growth slopes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

# The percentiles every latency summary reports, as (label, q in [0, 100]).
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99_9", 99.9),
)

Summary = dict[str, float]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of an ascending sequence, linearly interpolated.

    The same definition as numpy's default ("linear"), so numbers compare with other tools.
    NaN for an empty sequence.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    n = len(ordered)
    if n == 0:
        return math.nan
    rank = (n - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    weight = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * weight


def summarize(values: Iterable[float]) -> Summary:
    """Count, mean, the standard percentiles and the max of ``values`` (in their own unit)."""
    ordered = sorted(values)
    n = len(ordered)
    summary: Summary = {"n": float(n)}
    summary["mean"] = math.fsum(ordered) / n if n else math.nan
    for label, q in PERCENTILES:
        summary[label] = percentile(ordered, q)
    summary["max"] = ordered[-1] if n else math.nan
    return summary


def added(through: Summary, direct: Summary) -> Summary:
    """Per-statistic difference ``through - direct`` (what the gateway adds), skipping ``n``.

    Percentiles are differenced one by one (p99 of the gateway minus p99 direct), not taken
    over paired differences: the two samples are independent draws of the same workload.
    """
    return {key: through[key] - direct[key] for key in through if key != "n" and key in direct}


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (NaN with fewer than two distinct x)."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    n = len(xs)
    if n < 2:
        return math.nan
    mean_x = math.fsum(xs) / n
    mean_y = math.fsum(ys) / n
    var = math.fsum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return math.nan
    cov = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var


def gaps(times: Sequence[float]) -> list[float]:
    """Differences between consecutive arrival times (one fewer than ``times``)."""
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def rounded(summary: Summary, digits: int = 3) -> dict[str, float | int | None]:
    """A JSON-friendly copy: NaN becomes None, ``n`` an int, the rest rounded."""
    out: dict[str, float | int | None] = {}
    for key, value in summary.items():
        if key == "n":
            out[key] = int(value)
        elif math.isnan(value):
            out[key] = None
        else:
            out[key] = round(value, digits)
    return out
