"""A deployment's latency at a percentile, predicted from its live stats and its load.

TTFT at the route's percentile comes straight from the decayed TTFT histogram (answers that were
not streamed have no separate first token: their total stands in). Total latency is TTFT plus
the time-per-output-token percentile times the expected output tokens when those are known, else
the total histogram's percentile (which already reflects the route's usual answer length).
Adding two percentiles over-estimates the percentile of the sum a little: the safe direction.

Queueing term: a server sharing itself among the requests it holds (continuous batching, or a
cloud API's per-account concurrency) slows roughly in proportion to them. The histograms were
filled at the load requests usually start under (``stats.load``, smoothed); when more are in
flight now, across all gateways, latency is scaled by ``(in_flight + 1) / (load + 1)``. It reacts
before a single slow answer has come back, and never lowers a prediction.
"""

from __future__ import annotations

from gateway.routing.stats import TOTAL, TPOT, TTFT, DeploymentStats


def queue_factor(stats: DeploymentStats) -> float:
    """How much slower than observed a request starting now should expect to be (>= 1)."""
    waiting = stats.in_flight + stats.remote_in_flight
    if waiting <= stats.load:
        return 1.0
    return (waiting + 1.0) / (stats.load + 1.0)


def predict(
    stats: DeploymentStats, q: float, output_tokens: float | None, factor: float
) -> tuple[float | None, float | None]:
    """Predicted (TTFT, total) in seconds at quantile ``q``; None where nothing was observed."""
    total = stats.quantile(TOTAL, q)
    ttft = stats.quantile(TTFT, q) if stats.has(TTFT) else total
    if output_tokens is not None and ttft is not None and stats.has(TPOT):
        per_token = stats.quantile(TPOT, q)
        if per_token is not None:
            total = ttft + per_token * max(output_tokens - 1.0, 0.0)
    if factor != 1.0:
        ttft = None if ttft is None else ttft * factor
        total = None if total is None else total * factor
    return ttft, total


def meet_probability(
    stats: DeploymentStats,
    ttft_target_s: float | None,
    total_target_s: float | None,
    factor: float,
) -> float:
    """The observed share of requests that met both targets (scaled for the current load)."""
    probability = 1.0
    if ttft_target_s is not None:
        offset = TTFT if stats.has(TTFT) else TOTAL
        if stats.has(offset):
            probability = stats.share_below(offset, ttft_target_s / factor)
    if total_target_s is not None and stats.has(TOTAL):
        probability = min(probability, stats.share_below(TOTAL, total_target_s / factor))
    return probability
