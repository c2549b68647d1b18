"""Metrics: what ``observe`` counts, read back through the exposition with prometheus_client's
own parser, so the test checks what Prometheus would see."""

from __future__ import annotations

import itertools
import random
import string
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from gateway.api import metrics as metrics_api
from gateway.metrics import OTHER, Metrics
from gateway.metrics.core import STATUSES
from gateway.metrics.export import GoodputWindow
from gateway.metrics.instruments import LATENCY_BUCKETS, OVERHEAD_BUCKETS, TOKEN_BUCKETS
from gateway.metrics.series import HistogramBuffer
from gateway.record import RequestRecord

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(slots=True)
class TimedRecord(RequestRecord):
    """A record carrying the pipeline's overhead measurement (the field the lead adds)."""

    overhead_ms: float | None = None


async def scrape(metrics: Metrics) -> Samples:
    """Every sample of the exposition, keyed by (sample name, sorted labels)."""
    text = (await metrics.render()).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


# Every metric family the metrics issue names (counters without their _total suffix).
EXPORTED_FAMILIES = {
    "tollgate_requests",
    "tollgate_tokens",
    "tollgate_cost_usd",
    "tollgate_cost_saved_usd",
    "tollgate_ttft_seconds",
    "tollgate_time_per_output_token_seconds",
    "tollgate_request_duration_seconds",
    "tollgate_gateway_overhead_seconds",
    "tollgate_slo_requests",
    "tollgate_goodput_ratio",
    "tollgate_cache_requests",
    "tollgate_budget_rejections",
    "tollgate_budget_remaining",
    "tollgate_upstream_errors",
    "tollgate_breaker_open",
    "tollgate_in_flight",
    "tollgate_ledger_backlog",
    "tollgate_ledger_lag_seconds",
}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def bound(metrics: Metrics) -> Metrics:
    metrics.bind_names(
        routes=["chat", "embed"], deployments=["gpt-4o-mini", "pool-a"], teams=["search", "ads"]
    )
    return metrics


def make_record(rng: random.Random, index: int) -> TimedRecord:
    stream = rng.random() < 0.7
    ttft = rng.uniform(5, 900)
    status = rng.choice(["ok"] * 6 + ["upstream_error", "client_disconnect"])
    cache = rng.choice(["hit", "miss", "bypass", None])
    if cache == "hit" and status == "ok":
        status = "cache_hit"  # as the pipeline marks an answer from the prompt cache
    return TimedRecord(
        request_id=f"req_{index}",
        started=0.0,
        route=rng.choice(["chat", "embed"]),
        deployment=rng.choice(["gpt-4o-mini", "pool-a"]),
        team=rng.choice(["search", "ads"]),
        status=status,
        http_status=200,
        prompt_tokens=rng.randint(1, 4000),
        completion_tokens=rng.randint(0, 500),
        cached_tokens=rng.choice([0, 0, 128, 1024]),
        cost_usd=rng.choice([0.0, rng.uniform(0, 0.05)]),
        cost_saved_usd=rng.choice([0.0, 0.0, rng.uniform(0, 0.01)]),
        slo_met=rng.choice([True, False, None]),
        cache=cache,
        stream=stream,
        ttft_ms=ttft,
        total_ms=ttft + rng.uniform(0, 5000),
        overhead_ms=rng.uniform(0.05, 2.0),
    )


async def test_counters_equal_the_sums_fed() -> None:
    metrics = bound(Metrics())
    rng = random.Random(8)
    records = [make_record(rng, i) for i in range(500)]
    for record in records:
        metrics.observe(record)
    samples = await scrape(metrics)

    requests: dict[tuple[str, ...], int] = defaultdict(int)
    tokens: dict[tuple[str, ...], int] = defaultdict(int)
    cost: dict[tuple[str, ...], float] = defaultdict(float)
    saved: dict[tuple[str, ...], float] = defaultdict(float)
    slo: dict[tuple[str, str], int] = defaultdict(int)
    cache: dict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        assert r.route and r.deployment and r.team
        requests[r.route, r.deployment, r.team, r.status] += 1
        for kind, n in (
            ("prompt", r.prompt_tokens),
            ("completion", r.completion_tokens),
            ("cached", r.cached_tokens),
        ):
            tokens[r.route, r.deployment, r.team, kind] += n
        cost[r.route, r.deployment, r.team] += r.cost_usd
        saved[r.route, r.team] += r.cost_saved_usd
        if r.slo_met is not None:
            slo[r.route, str(r.slo_met).lower()] += 1
        if r.cache is not None:
            cache[r.route, r.cache] += 1

    for (route, deployment, team, status), n in requests.items():
        got = value(
            samples,
            "tollgate_requests_total",
            route=route,
            deployment=deployment,
            team=team,
            status=status,
        )
        assert got == n
    for (route, deployment, team, kind), n in tokens.items():
        labels = {"route": route, "deployment": deployment, "team": team, "kind": kind}
        assert value(samples, "tollgate_tokens_total", **labels) == n
    for (route, deployment, team), usd in cost.items():
        labels = {"route": route, "deployment": deployment, "team": team}
        assert value(samples, "tollgate_cost_usd_total", **labels) == pytest.approx(usd)
    for (route, team), usd in saved.items():
        assert value(
            samples, "tollgate_cost_saved_usd_total", route=route, team=team
        ) == pytest.approx(usd)
    for (route, met), n in slo.items():
        assert value(samples, "tollgate_slo_requests_total", route=route, met=met) == n
    for (route, result), n in cache.items():
        assert value(samples, "tollgate_cache_requests_total", route=route, result=result) == n
    assert sum(v for (name, _), v in samples.items() if name == "tollgate_requests_total") == len(
        records
    )

    # Histograms: successful requests only; cache hits timed under deployment "cache".
    ok = [r for r in records if r.status in ("ok", "cache_hit")]
    for route in ("chat", "embed"):
        for deployment in ("gpt-4o-mini", "pool-a", "cache"):
            mine = [
                r
                for r in ok
                if r.route == route
                and (deployment == "cache") == (r.cache == "hit")
                and (deployment == "cache" or r.deployment == deployment)
            ]
            labels = {"route": route, "deployment": deployment}
            assert value(samples, "tollgate_ttft_seconds_count", **labels) == len(mine)
            assert value(samples, "tollgate_ttft_seconds_sum", **labels) == pytest.approx(
                sum((r.ttft_ms or 0) / 1000 for r in mine)
            )
            assert value(
                samples, "tollgate_request_duration_seconds_sum", **labels
            ) == pytest.approx(sum((r.total_ms or 0) / 1000 for r in mine))
            assert value(samples, "tollgate_gateway_overhead_seconds_count", **labels) == len(mine)
            under_250ms = sum(1 for r in mine if (r.ttft_ms or 0) <= 250)
            assert (
                value(samples, "tollgate_ttft_seconds_bucket", le="0.25", **labels) == under_250ms
            )
            streamed = [r for r in mine if r.stream and r.completion_tokens > 1]
            tpot = sum(
                ((r.total_ms or 0) - (r.ttft_ms or 0)) / 1000 / (r.completion_tokens - 1)
                for r in streamed
            )
            assert value(samples, "tollgate_time_per_output_token_seconds_count", **labels) == len(
                streamed
            )
            assert value(
                samples, "tollgate_time_per_output_token_seconds_sum", **labels
            ) == pytest.approx(tpot)
    assert not any(name.endswith("_created") for name, _ in samples)


async def test_rejections_errors_and_gauges() -> None:
    metrics = bound(Metrics())
    for kind in ("insufficient_quota", "insufficient_quota", "rate_limit_exceeded"):
        status = "rejected_rate" if kind.startswith("rate") else "rejected_budget"
        metrics.observe(
            RequestRecord(
                "r", 0.0, team="ads", route="chat", status=status, http_status=429, error_type=kind
            )
        )
    metrics.observe(RequestRecord("r", 0.0, status="unauthorized", http_status=401))
    # A failed request the pipeline forgot to mark still does not count as ok.
    metrics.observe(RequestRecord("r", 0.0, route="chat", team="ads", http_status=500))
    for _ in range(3):
        metrics.upstream_error("pool-a", "upstream_timeout")
    metrics.upstream_error("gpt-4o-mini", "upstream_429")
    metrics.set_budget_remaining("search", "day", "tokens", 1500)
    metrics.set_budget_remaining("search", "month", "usd", 12.5)
    metrics.set_breaker_open("pool-a", None, True)
    metrics.set_breaker_open("pool-a", "http://pool-a:9100/v1", False)
    metrics.set_in_flight("pool-a", "http://pool-a:9100/v1", 7)
    metrics.set_ledger(42, 1.5)
    samples = await scrape(metrics)

    rejections = "tollgate_budget_rejections_total"
    assert value(samples, rejections, team="ads", kind="insufficient_quota") == 2
    assert value(samples, rejections, team="ads", kind="rate_limit_exceeded") == 1
    none = {"route": "none", "deployment": "none", "team": "none"}
    assert value(samples, "tollgate_requests_total", status="unauthorized", **none) == 1
    assert (
        value(
            samples,
            "tollgate_requests_total",
            route="chat",
            deployment="none",
            team="ads",
            status="error",
        )
        == 1
    )
    errors = "tollgate_upstream_errors_total"
    assert value(samples, errors, deployment="pool-a", type="upstream_timeout") == 3
    assert value(samples, errors, deployment="gpt-4o-mini", type="upstream_429") == 1
    remaining = "tollgate_budget_remaining"
    assert value(samples, remaining, team="search", window="day", unit="tokens") == 1500
    assert value(samples, remaining, team="search", window="month", unit="usd") == 12.5
    assert value(samples, "tollgate_breaker_open", deployment="pool-a", replica="all") == 1
    replica = "http://pool-a:9100/v1"
    assert value(samples, "tollgate_breaker_open", deployment="pool-a", replica=replica) == 0
    assert value(samples, "tollgate_in_flight", deployment="pool-a", replica=replica) == 7
    assert value(samples, "tollgate_ledger_backlog") == 42
    assert value(samples, "tollgate_ledger_lag_seconds") == 1.5
    # No latency series for requests that did not succeed.
    assert not any(name.startswith("tollgate_ttft") for name, _ in samples)


def hostile(rng: random.Random) -> str:
    alphabet = string.printable + "é€\u202e"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


async def test_labels_stay_bounded_under_hostile_values() -> None:
    metrics = bound(Metrics())
    rng = random.Random(1)
    for i in range(5000):
        metrics.observe(
            TimedRecord(
                request_id=hostile(rng),
                started=0.0,
                route=rng.choice(["chat", hostile(rng)]),
                deployment=rng.choice(["pool-a", hostile(rng), None]),
                team=rng.choice(["ads", hostile(rng), f"team-{i}"]),
                status=rng.choice(["ok", "rejected_budget", hostile(rng), f"status_{i}"]),
                http_status=rng.choice([200, 429, 500]),
                error_type=rng.choice([None, hostile(rng), f"kind_{i}"]),
                prompt_tokens=1,
                completion_tokens=2,
                cost_usd=0.5,
                slo_met=rng.choice([True, False]),
                cache=rng.choice(["hit", hostile(rng)]),
                end_user=hostile(rng),
                stream=True,
                ttft_ms=10.0,
                total_ms=20.0,
                overhead_ms=0.1,
            )
        )
        metrics.upstream_error(hostile(rng), f"err_{i}")
        metrics.set_in_flight(rng.choice(["pool-a", hostile(rng)]), f"http://r{i}:1/v1", 1)
        metrics.set_budget_remaining(hostile(rng), hostile(rng), hostile(rng), 1.0)
    samples = await scrape(metrics)

    allowed = {
        "route": {"chat", "embed", OTHER, "none"},
        "deployment": {"gpt-4o-mini", "pool-a", "cache", OTHER, "none"},
        "team": {"search", "ads", OTHER, "none"},
        "result": {"hit", "miss", "bypass", OTHER},
        "window": {"minute", "hour", "day", "week", "month", OTHER},
        "unit": {"tokens", "usd", "requests", OTHER},
    }
    for _name, labels in samples:
        for label, label_value in labels:
            if label in allowed:
                assert label_value in allowed[label], (label, label_value)
            assert label_value.isprintable() and '"' not in label_value
    # Code-produced values (status, kind, type, replica) are capped, not trusted.
    per_label: dict[str, set[str]] = defaultdict(set)
    for _name, labels in samples:
        for label, label_value in labels:
            per_label[label].add(label_value)
    assert len(per_label["status"]) <= len(STATUSES) + 16 + 1
    assert len(per_label["kind"]) <= 32 + 1 + 3  # rejection kinds, other, token kinds
    assert len(per_label["type"]) <= 64 + 1
    assert len(per_label["replica"]) <= 256 + 1
    assert len(samples) < 6000, len(samples)
    print(f"series after 5,000 hostile requests: {len(samples)}")
    total = sum(v for (name, _), v in samples.items() if name == "tollgate_requests_total")
    assert total == 5000  # nothing lost to "other"


async def test_two_apps_in_one_process_do_not_clash() -> None:
    first, second = Metrics(), Metrics()
    first.observe(RequestRecord("a", 0.0, route="chat", status="ok", http_status=200))
    a, b = await scrape(first), await scrape(second)
    labels = {"route": "chat", "deployment": "none", "team": "none", "status": "ok"}
    assert value(a, "tollgate_requests_total", **labels) == 1
    assert value(b, "tollgate_requests_total", **labels) == 0


async def test_a_policy_reload_rebinds_names() -> None:
    metrics = bound(Metrics())
    metrics.observe(RequestRecord("a", 0.0, route="new-route", status="ok", http_status=200))
    metrics.bind_names(routes=["new-route"], deployments=[], teams=[])
    metrics.observe(RequestRecord("b", 0.0, route="new-route", status="ok", http_status=200))
    samples = await scrape(metrics)
    common = {"deployment": "none", "team": "none", "status": "ok"}
    assert value(samples, "tollgate_requests_total", route=OTHER, **common) == 1
    assert value(samples, "tollgate_requests_total", route="new-route", **common) == 1


async def test_goodput_ratio_over_the_window() -> None:
    now = [1000.0]
    metrics = bound(Metrics(goodput_window_s=300))
    metrics.exporter._clock = lambda: now[0]

    def feed(route: str, met: int, missed: int) -> None:
        for i in range(met + missed):
            metrics.observe(
                RequestRecord("r", 0.0, route=route, status="ok", slo_met=i < met, http_status=200)
            )

    feed("chat", 9, 1)
    samples = await scrape(metrics)  # first scrape: everything since the start
    assert value(samples, "tollgate_goodput_ratio", route="chat") == pytest.approx(0.9)
    assert ("tollgate_goodput_ratio", (("route", "embed"),)) not in samples
    now[0] += 200
    feed("chat", 0, 10)
    samples = await scrape(metrics)  # still inside the first window: 9 of 20
    assert value(samples, "tollgate_goodput_ratio", route="chat") == pytest.approx(0.45)
    now[0] += 150  # the first snapshot is now older than the window: it is the baseline
    feed("chat", 5, 5)
    feed("embed", 3, 1)
    samples = await scrape(metrics)
    assert value(samples, "tollgate_goodput_ratio", route="chat") == pytest.approx(5 / 20)
    assert value(samples, "tollgate_goodput_ratio", route="embed") == pytest.approx(0.75)
    now[0] += 400  # no traffic for a whole window: no ratio rather than a stale one
    await scrape(metrics)
    now[0] += 10
    samples = await scrape(metrics)
    assert ("tollgate_goodput_ratio", (("route", "chat"),)) not in samples


def test_goodput_window_keeps_few_snapshots() -> None:
    window = GoodputWindow(window_s=60)
    totals = {"chat": (0.0, 0.0)}
    for second in range(10_000):
        totals = {"chat": (totals["chat"][0] + 1, totals["chat"][1] + 2)}
        assert window.ratios(totals, float(second)) == pytest.approx({"chat": 0.5})
    assert len(window._snapshots) <= 62


async def test_updaters_run_before_a_scrape_and_failures_do_not_break_it() -> None:
    metrics = Metrics()
    backlog = [3]

    def ledger() -> None:
        metrics.set_ledger(backlog[0], 0.25)

    async def breakers() -> None:
        metrics.set_breaker_open("pool-a", None, True)

    def broken() -> None:
        raise RuntimeError("owner went away")

    metrics.add_updater(broken)
    metrics.add_updater(ledger)
    metrics.add_updater(breakers)
    samples = await scrape(metrics)
    assert value(samples, "tollgate_ledger_backlog") == 3
    assert value(samples, "tollgate_breaker_open", deployment="pool-a", replica="all") == 1
    backlog[0] = 0
    assert value(await scrape(metrics), "tollgate_ledger_backlog") == 0


async def test_get_metrics_serves_the_text_format() -> None:
    metrics = bound(Metrics())
    metrics.observe(RequestRecord("a", 0.0, route="chat", team="ads", status="ok", prompt_tokens=5))
    app = FastAPI()
    app.include_router(metrics_api.router)
    app.state.services = SimpleNamespace(metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    names = {f.name for f in text_string_to_metric_families(answer.text)}
    assert names >= EXPORTED_FAMILIES


def test_buckets_span_the_ranges() -> None:
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 60.0
    assert OVERHEAD_BUCKETS[0] == 0.00005
    for buckets in (LATENCY_BUCKETS, OVERHEAD_BUCKETS, TOKEN_BUCKETS):
        assert all(a < b for a, b in itertools.pairwise(buckets))


def test_histogram_buffer_matches_prometheus_observe() -> None:
    """The buffer writes into prometheus_client's bucket values (no public call does that):
    its output must equal a histogram fed through the public observe()."""
    registry = CollectorRegistry()
    buffered = Histogram("buffered", "b", ("x",), registry=registry, buckets=LATENCY_BUCKETS)
    reference = Histogram("reference", "r", ("x",), registry=registry, buckets=LATENCY_BUCKETS)
    buffer = HistogramBuffer(LATENCY_BUCKETS, lambda: buffered.labels("a"))
    rng = random.Random(5)
    values = [rng.choice(LATENCY_BUCKETS) for _ in range(200)]  # bounds fall in their bucket
    values += [rng.uniform(0, 100) for _ in range(800)] + [0.0, 1e9]
    for index, amount in enumerate(values):
        buffer.add(amount)
        reference.labels("a").observe(amount)
        if index % 300 == 0:
            buffer.flush()
    buffer.flush()

    def samples(name: str) -> dict[tuple[str, str], float]:
        return {
            (s.name.removeprefix(name), s.labels.get("le", "")): s.value
            for family in registry.collect()
            if family.name == name
            for s in family.samples
            if not s.name.endswith("_created")
        }

    got, expected = samples("buffered"), samples("reference")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
