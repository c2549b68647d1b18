"""Live stats: percentiles from decayed histograms, decay by decision and by time, snapshots."""

from __future__ import annotations

import orjson
import pytest

from gateway.routing import RoutingStats, StatsConfig
from gateway.routing.histogram import bucket, edge, quantile, share_below
from gateway.routing.stats import TOTAL, TTFT
from gateway.routing.sync import merge, snapshot

T0 = 100.0


def feed(stats: RoutingStats, name: str, values_ms: list[float], now: float = T0) -> None:
    for value in values_ms:
        stats.started(name)
        stats.finished(
            "chat", name, "r1", ok=True, ttft_s=value / 1000, total_s=value / 500, now=now
        )


def test_histogram_percentiles_are_within_a_few_percent() -> None:
    weights = [0.0] * 96
    values = [0.100 + 0.100 * i / 999 for i in range(1000)]  # uniform 100-200 ms
    for value in values:
        weights[bucket(value)] += 1.0
    assert quantile(weights, 0, 1000.0, 0.5) == pytest.approx(0.150, rel=0.04)
    assert quantile(weights, 0, 1000.0, 0.95) == pytest.approx(0.195, rel=0.04)
    assert share_below(weights, 0, 1000.0, 0.150) == pytest.approx(0.5, abs=0.05)
    assert share_below(weights, 0, 1000.0, 0.001) == 0.0
    assert share_below(weights, 0, 1000.0, 10.0) == 1.0
    assert quantile(weights, 0, 0.0, 0.5) is None
    assert edge(bucket(0.25)) <= 0.25 < edge(bucket(0.25) + 1)
    assert bucket(0.0) == 0 and bucket(1e9) == 95


def test_observations_fill_ttft_total_and_health() -> None:
    stats = RoutingStats(clock=lambda: T0)
    feed(stats, "pool", [100.0] * 30)
    stats.started("pool")
    stats.finished("chat", "pool", "r1", ok=False, error_kind="upstream_connect_error", now=T0)
    pool = stats.deployment("pool")
    assert pool.quantile(TTFT, 0.95) == pytest.approx(0.1, rel=0.1)
    assert pool.quantile(TOTAL, 0.95) == pytest.approx(0.2, rel=0.1)
    assert pool.error_rate() == pytest.approx(1 / 31)
    assert pool.in_flight == 0
    assert pool.last_seen == T0


def test_a_timeout_counts_as_at_least_that_slow() -> None:
    stats = RoutingStats(clock=lambda: T0)
    stats.started("pool")
    stats.finished("chat", "pool", None, ok=False, total_s=30.0, error_kind="upstream_timeout")
    assert stats.deployment("pool").quantile(TTFT, 0.5) == pytest.approx(30.0, rel=0.2)


def test_decisions_fade_old_observations() -> None:
    stats = RoutingStats(StatsConfig(keep_per_tick=0.97), clock=lambda: T0)
    feed(stats, "pool", [100.0] * 50)
    pool = stats.deployment("pool")
    for _ in range(100):  # a hundred decisions elsewhere: old weight x 0.97^100 = 4.8%
        pool.tick()
    feed(stats, "pool", [600.0])
    # One new answer against fifty faded ones: it is 30% of the weight, so it sets the p95
    # (anywhere in its 19%-wide bucket).
    p95 = pool.quantile(TTFT, 0.95)
    assert p95 is not None and 0.59 <= p95 < 0.6 * 1.19
    assert pool.quantile(TTFT, 0.5) == pytest.approx(0.1, rel=0.1)


def test_time_fades_faster_for_a_candidate_passed_over() -> None:
    config = StatsConfig(keep_per_tick=1.0, half_life_s=10.0, passed_over_half_life_s=1.5)
    stats = RoutingStats(config, clock=lambda: T0)
    feed(stats, "chosen", [600.0] * 20)
    feed(stats, "passed", [600.0] * 20)
    stats.deployment("passed").set_chosen(False, T0)
    later = T0 + 9.0  # 0.9 half-lives for one, 6 for the other
    feed(stats, "chosen", [100.0], now=later)
    feed(stats, "passed", [100.0], now=later)
    assert stats.deployment("chosen").quantile(TTFT, 0.5) == pytest.approx(0.6, rel=0.1)
    assert stats.deployment("passed").quantile(TTFT, 0.5) == pytest.approx(0.1, rel=0.1)


def test_long_silences_and_many_ticks_do_not_overflow() -> None:
    stats = RoutingStats(clock=lambda: T0)
    feed(stats, "pool", [100.0] * 10)
    pool = stats.deployment("pool")
    for _ in range(20_000):  # 0.97^-20000 would be 1e264: rescaled on the way
        pool.tick()
    feed(stats, "pool", [200.0] * 10, now=T0 + 1.0)
    assert pool.scale < 1e130
    assert pool.quantile(TTFT, 0.5) == pytest.approx(0.2, rel=0.1)
    feed(stats, "pool", [300.0], now=T0 + 1e7)  # a year later
    assert pool.quantile(TTFT, 0.5) == pytest.approx(0.3, rel=0.1)


def test_route_goodput_and_traffic_share() -> None:
    stats = RoutingStats(clock=lambda: T0)
    for index in range(10):
        name = "cheap" if index < 8 else "dear"
        stats.started(name)
        stats.finished(
            "chat", name, None, ok=True, ttft_s=0.1, total_s=0.5, output_tokens=40,
            slo_met=index not in (3, 7), now=T0,
        )  # fmt: skip
    stats.started("cheap")
    stats.finished("chat", "cheap", None, ok=False, error_kind="upstream_error", now=T0)
    view = stats.route_stats("chat", now=T0)
    assert view["goodput"] == 0.8
    assert view["slo_met"] == 8 and view["slo_missed"] == 2
    assert view["errors"] == 1 and view["requests"] == 11
    assert view["traffic_share"] == {"cheap": 0.8, "dear": 0.2}
    assert view["mean_output_tokens"] == 40.0
    assert view["since_start"]["requests"] == 11
    # The window fades: a minute later the same counts weigh half.
    assert stats.route_stats("chat", now=T0 + 60)["requests"] == pytest.approx(5.5)
    assert stats.route_stats("chat", now=T0 + 60)["goodput"] == 0.8


def test_a_snapshot_merged_elsewhere_adds_without_double_counting() -> None:
    here = RoutingStats(clock=lambda: T0)
    there = RoutingStats(clock=lambda: T0)
    feed(here, "pool", [100.0] * 20)
    feed(there, "pool", [800.0] * 20)
    there.started("pool")  # one request in flight over there
    blob = snapshot(there, T0, wall=5000.0)
    for _ in range(3):  # syncing again replaces the remote part, never accumulates it
        assert merge(here, [blob], T0, wall=5000.0) == 1
    pool = here.deployment("pool")
    assert pool.quantile(TTFT, 0.25) == pytest.approx(0.1, rel=0.1)
    assert pool.quantile(TTFT, 0.75) == pytest.approx(0.8, rel=0.1)
    assert pool.observations() == pytest.approx(40, rel=0.01)
    assert pool.remote_in_flight == 1
    assert here.route_stats("chat", now=T0)["requests"] == pytest.approx(40)
    # An old snapshot is decayed by its age, and a silent gateway's in-flight count is ignored.
    merge(here, [blob], T0, wall=5000.0 + 10.0)
    assert pool.observations() == pytest.approx(20 + 20 * 0.5, rel=0.01)
    assert pool.remote_in_flight == 0
    merge(here, [], T0, wall=5000.0)
    assert pool.observations() == pytest.approx(20, rel=0.01)


def test_malformed_snapshots_are_ignored() -> None:
    here = RoutingStats(clock=lambda: T0)
    feed(here, "pool", [100.0] * 5)
    blobs = [b"not json", orjson.dumps({"v": 99}), orjson.dumps({"v": 1, "t": "x", "d": {}})]
    assert merge(here, blobs, T0, wall=5000.0) == 0
    assert here.deployment("pool").observations() == pytest.approx(5)


def test_an_unmatched_finish_does_not_go_negative() -> None:
    stats = RoutingStats(clock=lambda: T0)
    stats.finished("chat", "pool", None, ok=True, ttft_s=0.1, total_s=0.2)
    assert stats.deployment("pool").in_flight == 0
