"""Log-spaced latency buckets: where a duration falls, and percentiles read back from weights.

Four buckets per doubling from 2^-14 s (61 us) to 2^10 s (17 min): 96 buckets, each 19% wide,
so a percentile read back (interpolated inside its bucket) is within a few percent of the true
value. Weights are plain floats in lists: callers decay them (see ``stats.py``), this module only
does the arithmetic.
"""

from __future__ import annotations

import math
from typing import Final

PER_OCTAVE: Final = 4
LOG2_MIN: Final = -14
BUCKETS: Final = 24 * PER_OCTAVE
MIN_S: Final = 2.0**LOG2_MIN
MAX_S: Final = 2.0 ** (LOG2_MIN + BUCKETS / PER_OCTAVE)


def bucket(seconds: float) -> int:
    """The bucket index of a duration (clamped to the range)."""
    if seconds <= MIN_S:
        return 0
    index = int((math.log2(seconds) - LOG2_MIN) * PER_OCTAVE)
    return index if index < BUCKETS else BUCKETS - 1


def edge(position: float) -> float:
    """The duration at a (fractional) bucket position: ``edge(i)`` is bucket i's lower bound."""
    return float(2.0 ** (LOG2_MIN + position / PER_OCTAVE))


def quantile(weights: list[float], offset: int, total: float, q: float) -> float | None:
    """The ``q`` quantile (0..1) of the histogram ``weights[offset:offset + BUCKETS]``."""
    if total <= 0.0:
        return None
    target = q * total
    accumulated = 0.0
    last = -1
    for index, weight in enumerate(weights[offset : offset + BUCKETS]):
        if weight <= 0.0:
            continue
        if accumulated + weight >= target:
            # Geometric interpolation inside the bucket: durations are spread log-uniformly.
            return edge(index + (target - accumulated) / weight)
        accumulated += weight
        last = index
    # Rounding left the target a hair above the sum: the top of the highest non-empty bucket.
    return edge(last + 1) if last >= 0 else None


def share_below(weights: list[float], offset: int, total: float, seconds: float) -> float:
    """The share of the histogram's weight below ``seconds`` (its CDF there), 0..1."""
    if total <= 0.0:
        return 1.0
    if seconds <= MIN_S:
        return 0.0
    position = (math.log2(seconds) - LOG2_MIN) * PER_OCTAVE
    if position >= BUCKETS:
        return 1.0
    index = int(position)
    below = math.fsum(weights[offset : offset + index])
    below += weights[offset + index] * (position - index)
    return min(1.0, below / total)
