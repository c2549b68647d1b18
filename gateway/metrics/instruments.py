"""Every metric Tollgate exports, created in a registry that belongs to one app.

Nothing here touches prometheus_client's global default registry: :class:`Instruments` is built
per :class:`gateway.metrics.Metrics`, so two apps in one process (tests) never clash.

``tollgate_goodput_ratio`` is not an instrument: it is derived at scrape time from
``tollgate_slo_requests_total`` (see ``gateway.metrics.export``), which makes it correct with
several worker processes too.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# fmt: off
# Latency buckets from 1 ms to 60 s, denser around the usual TTFT targets (100-500 ms).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
)
# Time per output token: 1 ms (a fast GPU) to 1 s (a crawling one); 20 ms is 50 tokens/s.
TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 1.0,
)
# The gateway's own time: from 50 us (the target's order of magnitude) up to a second.
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
)
# fmt: on

ROUTE_DEPLOYMENT = ("route", "deployment")


@dataclass(frozen=True, slots=True)
class Instruments:
    """The prometheus_client objects, one per exported name."""

    registry: CollectorRegistry
    requests: Counter
    tokens: Counter
    cost: Counter
    cost_saved: Counter
    ttft: Histogram
    time_per_output_token: Histogram
    request_duration: Histogram
    gateway_overhead: Histogram
    slo_requests: Counter
    cache_requests: Counter
    budget_rejections: Counter
    budget_remaining: Gauge
    upstream_errors: Counter
    breaker_open: Gauge
    in_flight: Gauge
    ledger_backlog: Gauge
    ledger_lag: Gauge

    @classmethod
    def create(cls) -> Instruments:
        """A fresh registry holding every instrument.

        The ``multiprocess_mode`` of each gauge says how the values of several worker processes
        combine (it only matters with ``PROMETHEUS_MULTIPROC_DIR``); the ``live`` modes drop a
        worker's values once it has exited.
        """
        r = CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter(
                "tollgate_requests",
                "Requests served, by outcome.",
                ("route", "deployment", "team", "status"),
                registry=r,
            ),
            tokens=Counter(
                "tollgate_tokens",
                "Tokens by kind: prompt, completion, and cached (the part of prompt tokens the "
                "upstream served from its prompt cache).",
                ("route", "deployment", "team", "kind"),
                registry=r,
            ),
            cost=Counter(
                "tollgate_cost_usd",
                "Spend in US dollars.",
                ("route", "deployment", "team"),
                registry=r,
            ),
            cost_saved=Counter(
                "tollgate_cost_saved_usd",
                "US dollars not spent thanks to Tollgate's prompt cache.",
                ("route", "team"),
                registry=r,
            ),
            ttft=Histogram(
                "tollgate_ttft_seconds",
                "Time from the request's arrival to the first byte of the answer (the whole "
                "answer when not streamed), successful requests.",
                ROUTE_DEPLOYMENT,
                registry=r,
                buckets=LATENCY_BUCKETS,
            ),
            time_per_output_token=Histogram(
                "tollgate_time_per_output_token_seconds",
                "Streamed answers: (last byte - first byte) / (completion tokens - 1).",
                ROUTE_DEPLOYMENT,
                registry=r,
                buckets=TOKEN_BUCKETS,
            ),
            request_duration=Histogram(
                "tollgate_request_duration_seconds",
                "Time from the request's arrival to the end of the answer, successful requests.",
                ROUTE_DEPLOYMENT,
                registry=r,
                buckets=LATENCY_BUCKETS,
            ),
            gateway_overhead=Histogram(
                "tollgate_gateway_overhead_seconds",
                "Time the gateway itself added before the first byte (not waiting on upstreams).",
                ROUTE_DEPLOYMENT,
                registry=r,
                buckets=OVERHEAD_BUCKETS,
            ),
            slo_requests=Counter(
                "tollgate_slo_requests",
                "Requests on routes with an SLO, by whether they met it (met = true | false).",
                ("route", "met"),
                registry=r,
            ),
            cache_requests=Counter(
                "tollgate_cache_requests",
                "Prompt cache lookups on caching routes (result = hit | miss | bypass).",
                ("route", "result"),
                registry=r,
            ),
            budget_rejections=Counter(
                "tollgate_budget_rejections",
                "Requests refused by a budget or a rate limit, by the kind of limit.",
                ("team", "kind"),
                registry=r,
            ),
            budget_remaining=Gauge(
                "tollgate_budget_remaining",
                "What is left of a team's budget in the current window (unit = tokens | usd | "
                "requests).",
                ("team", "window", "unit"),
                registry=r,
                multiprocess_mode="livemostrecent",
            ),
            upstream_errors=Counter(
                "tollgate_upstream_errors",
                "Failed upstream attempts (each attempt of a failover counts), by error type.",
                ("deployment", "type"),
                registry=r,
            ),
            breaker_open=Gauge(
                "tollgate_breaker_open",
                "1 while the circuit breaker of a deployment (replica 'all') or replica is open.",
                ("deployment", "replica"),
                registry=r,
                multiprocess_mode="livemax",
            ),
            in_flight=Gauge(
                "tollgate_in_flight",
                "Upstream requests in flight.",
                ("deployment", "replica"),
                registry=r,
                multiprocess_mode="livesum",
            ),
            ledger_backlog=Gauge(
                "tollgate_ledger_backlog",
                "Usage-ledger rows appended locally but not yet in the database.",
                registry=r,
                multiprocess_mode="livesum",
            ),
            ledger_lag=Gauge(
                "tollgate_ledger_lag_seconds",
                "Age of the oldest usage-ledger row not yet in the database.",
                registry=r,
                multiprocess_mode="livemax",
            ),
        )
