"""Measurements at one request in flight: added latency, streaming, a cache hit, a huge prompt.

Every measurement alternates a direct request to the stub with the same request through the
gateway, on one keep-alive connection each, swapping which goes first every round, so both see
the same machine (noise, frequency, other tenants) and their difference is the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.client import Connection, Exchange, Options, Target, connect
from bench.stats import added, gaps, rounded, summarize
from bench.workload import Bodies

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Targets:
    """The stub and the gateway, for the fast and the paced (model-like) upstream."""

    direct: Target
    gateway: Target
    direct_paced: Target
    gateway_paced: Target


@dataclass(slots=True)
class Paired:
    """What :func:`alternate` collected: the measured exchanges of each side."""

    direct: list[Exchange]
    gateway: list[Exchange]


async def alternate(
    direct: Target,
    gateway: Target,
    make_body: Callable[[], bytes],
    *,
    rounds: int | None = None,
    seconds: float | None = None,
    warmup: int = 50,
    options: Options | None = None,
) -> Paired:
    """Alternate direct and gateway requests for ``rounds`` (or ``seconds``) after a warm-up.

    Each side gets its own body from ``make_body`` (distinct prompts stay distinct).
    """
    opts = options or Options()
    gateway_opts = Options(events=opts.events, headers=True, body=opts.body)
    conns = (await connect(direct, opts), await connect(gateway, gateway_opts))
    payloads = (direct, gateway)
    paired = Paired([], [])
    try:
        deadline = time.perf_counter() + seconds if seconds is not None else None
        done = 0
        while True:
            if rounds is not None and done >= rounds + warmup:
                break
            if deadline is not None and done >= warmup and time.perf_counter() > deadline:
                break
            order = (0, 1) if done % 2 == 0 else (1, 0)
            for side in order:
                exchange = await conns[side].call(payloads[side].request(make_body()))
                if done >= warmup:
                    (paired.direct, paired.gateway)[side].append(exchange)
            done += 1
    finally:
        for conn in conns:
            conn.close()
    return paired


def _ms(exchanges: list[Exchange], measure: Callable[[Exchange], float]) -> list[float]:
    return [measure(e) * 1000 for e in exchanges if e.status == 200]


def _observed(exchanges: list[Exchange]) -> Json:
    """Statuses and the gateway's x-tollgate-* headers: which features acted on the requests."""
    statuses = Counter(e.status for e in exchanges)
    headers: dict[str, Counter[str]] = {}
    for e in exchanges:
        for name, value in (e.headers or {}).items():
            # Values that differ per request (ids, costs) are reduced to "present".
            kept = value if name in ("x-tollgate-cache", "x-tollgate-deployment") else "present"
            headers.setdefault(name, Counter())[kept] += 1
    return {
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "headers": {name: dict(counts) for name, counts in sorted(headers.items())},
    }


def compare(paired: Paired, measure: Callable[[Exchange], float]) -> Json:
    """Direct, gateway and added (gateway - direct) summaries of ``measure`` in ms."""
    direct = summarize(_ms(paired.direct, measure))
    through = summarize(_ms(paired.gateway, measure))
    return {
        "direct_ms": rounded(direct),
        "gateway_ms": rounded(through),
        "added_ms": rounded(added(through, direct)),
    }


async def added_latency(targets: Targets, bodies: Bodies, rounds: int) -> Json:
    """1. What the gateway adds at one request in flight, full path, distinct prompts."""
    paired = await alternate(targets.direct, targets.gateway, bodies.distinct, rounds=rounds)
    return {
        "rounds": rounds,
        **compare(paired, lambda e: e.latency),
        "observed": _observed(paired.gateway),
    }


async def streaming(targets: Targets, bodies: Bodies, rounds: int, *, paced: bool) -> Json:
    """3. Added time to first token and added gap between chunks (buffering would show)."""
    direct, gateway = (
        (targets.direct_paced, targets.gateway_paced)
        if paced
        else (targets.direct, targets.gateway)
    )
    route = "chat-paced" if paced else "chat"

    def make() -> bytes:
        return bodies.distinct(stream=True, route=route)

    paired = await alternate(
        direct, gateway, make, rounds=rounds, warmup=5 if paced else 50, options=Options(True)
    )

    def ttft(e: Exchange) -> float:
        return (e.events[0] - e.sent) if e.events else float("nan")

    result = {"rounds": rounds, "paced": paced, "ttft": compare(paired, ttft)}
    gap_direct = summarize(g * 1000 for e in paired.direct for g in gaps(e.events or []))
    gap_gateway = summarize(g * 1000 for e in paired.gateway for g in gaps(e.events or []))
    result["gap"] = {
        "direct_ms": rounded(gap_direct),
        "gateway_ms": rounded(gap_gateway),
        "added_ms": rounded(added(gap_gateway, gap_direct)),
    }
    result["total"] = compare(paired, lambda e: e.latency)
    result["events_per_response"] = {
        "direct": rounded(summarize(len(e.events or []) for e in paired.direct)),
        "gateway": rounded(summarize(len(e.events or []) for e in paired.gateway)),
    }
    result["observed"] = _observed(paired.gateway)
    return result


async def cache_hit(
    targets: Targets, bodies: Bodies, rounds: int, upstream_calls: Callable[[], int]
) -> Json:
    """4. The same prompt again and again: served from the cache, never reaching the stub."""
    label = f"hit-{time.monotonic_ns()}"
    primer = await connect(targets.gateway, Options(headers=True))
    try:
        first = await primer.call(targets.gateway.request(bodies.fixed(label)))
    finally:
        primer.close()
    await asyncio.sleep(0.3)  # the write may complete after the answer was sent
    before = upstream_calls()
    paired = await alternate(
        targets.direct, targets.gateway, lambda: bodies.fixed(label), rounds=rounds, warmup=10
    )
    # Each direct request (warm-up included) reached the stub once; the rest came from the gateway.
    upstream_from_gateway = upstream_calls() - before - (rounds + 10)
    observed = _observed(paired.gateway)
    hits = observed["headers"].get("x-tollgate-cache", {}).get("hit", 0)
    return {
        "rounds": rounds,
        "first_status": first.status,
        "first_cache_header": (first.headers or {}).get("x-tollgate-cache"),
        **compare(paired, lambda e: e.latency),
        "hits": hits,
        "upstream_calls_from_gateway": upstream_from_gateway,
        "served_from_cache": upstream_from_gateway == 0,
        "observed": observed,
    }


async def big_prompt(targets: Targets, bodies: Bodies, filler: str, seconds: float) -> Json:
    """6. Small requests' latency without, then with, a 100k-token prompt always in flight."""
    quiet = await alternate(targets.direct, targets.gateway, bodies.distinct, seconds=seconds)
    big_latencies: list[float] = []
    big_statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def keep_one_in_flight() -> None:
        conn: Connection = await connect(targets.gateway)
        try:
            while not stop.is_set():
                exchange = await conn.call(targets.gateway.request(bodies.big(filler)))
                big_statuses[exchange.status] += 1
                big_latencies.append(exchange.latency * 1000)
                if exchange.status < 0:
                    conn = await connect(targets.gateway)
        finally:
            conn.close()

    background = asyncio.ensure_future(keep_one_in_flight())
    try:
        await asyncio.sleep(0.2)  # the first big request is on its way
        loaded = await alternate(
            targets.direct, targets.gateway, bodies.distinct, seconds=seconds, warmup=5
        )
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(background, 30)
    without = compare(quiet, lambda e: e.latency)
    with_big = compare(loaded, lambda e: e.latency)
    raise_ms = {
        key: round(with_big["gateway_ms"][key] - without["gateway_ms"][key], 3)
        for key in ("p50", "p99")
    }
    direct_raise = {
        key: round(with_big["direct_ms"][key] - without["direct_ms"][key], 3)
        for key in ("p50", "p99")
    }
    return {
        "seconds_per_phase": seconds,
        "big_prompt_bytes": len(bodies.big(filler)),
        "big_requests": sum(big_statuses.values()),
        "big_statuses": {str(k): v for k, v in big_statuses.items()},
        "big_latency_ms": rounded(summarize(big_latencies)),
        "without": without,
        "with": with_big,
        "gateway_raise_ms": raise_ms,
        "direct_raise_ms": direct_raise,
    }
