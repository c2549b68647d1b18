"""The measurements of a run, each a coroutine filling one entry of the results."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import load, measure, report, stack
from bench.interrupt import StopSwitch
from bench.openloop import Pool
from bench.plan import Plan
from bench.procs import (
    Processes,
    cpu_seconds,
    http_get,
    pids_named,
    process_tree,
    run_queue_seconds,
    wait_idle,
)
from bench.workload import Bodies

Json = dict[str, Any]
# Where a section's result lives in the results, when not under its own name.
RESULT_KEYS = {"bigprompt": "big_prompt", "cache": "cache_hit"}
# The generator is checked against the stub alone up to well past any gateway rate.
GENERATOR_RATES = (1000.0, 2000.0, 4000.0, 8000.0)


def log(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


@dataclass(slots=True)
class Run:
    """Everything one run holds; sections read it and fill ``doc``."""

    plan: Plan
    args: argparse.Namespace
    procs: Processes
    run_dir: Path
    doc: Json
    bodies: Bodies
    backends: stack.Backends
    stub: stack.Stub | None = None
    policy: stack.PolicyChoice | None = None
    gateway: stack.Gateway | None = None
    sampler: load.RssSampler | None = None
    stop: StopSwitch = field(default_factory=StopSwitch)  # Ctrl-C / SIGTERM: skip what is left

    @property
    def results(self) -> Json:
        """The results part of the document (one entry per section)."""
        found: Json = self.doc["results"]
        return found

    def targets(self) -> measure.Targets:
        """Where requests go: the stub (fast and paced) and the gateway."""
        assert self.stub is not None and self.gateway is not None
        return measure.Targets(
            direct=self.stub.target("/fast"),
            gateway=self.gateway.target(),
            direct_paced=self.stub.target("/real"),
            gateway_paced=self.gateway.target(),
        )

    def upstream_calls(self) -> int:
        """Chat calls the stub has received so far."""
        assert self.stub is not None
        _, body = http_get(stack.HOST, self.stub.port, "/stats")
        count: int = orjson.loads(body)["requests"]
        return count

    def services_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the Redis and Postgres servers on this machine (every
        ``redis-server`` and ``postgres`` process), for the ones the gateway uses: they share
        its cores. Empty in the embedded mode."""
        found: dict[str, float] = {}
        for name, used, command in (
            ("redis", self.backends.redis_url, "redis-server"),
            ("postgres", self.backends.database_url, "postgres"),
        ):
            pids = pids_named({command}) if used else []
            if pids:
                found[name] = cpu_seconds(pids)
        return found

    def gateway_cpu(self) -> float:
        """CPU seconds the running gateway's processes have used so far."""
        assert self.gateway is not None
        return cpu_seconds(process_tree(self.gateway.started.pid))

    def gateway_waited(self) -> float:
        """Seconds the running gateway's threads have been runnable but waiting for a core."""
        assert self.gateway is not None
        return run_queue_seconds(process_tree(self.gateway.started.pid))

    async def settle(self) -> None:
        """Wait until the gateway is idle: what a previous step queued must not leak into the
        next measurement."""
        if self.gateway is not None and self.gateway.started.proc.poll() is None:
            waited = await asyncio.to_thread(wait_idle, self.gateway.started.pid)
            if waited > 2:
                log(f"   (waited {waited:.1f} s for the gateway to go idle)")

    async def section(self, name: str, work: Callable[[], Awaitable[Json]]) -> None:
        """Run one section if the plan has it and no stop was asked for; a failure is
        recorded, not raised."""
        if name not in self.plan.sections or self.stop.requested:
            return
        log(f"== {name}")
        await self.settle()
        started = time.monotonic()
        try:
            self.results[RESULT_KEYS.get(name, name)] = await work()
        except Exception as exc:  # one broken measurement must not lose the others
            self.doc["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"   {name} failed: {type(exc).__name__}: {exc}")
        log(f"   ({time.monotonic() - started:.1f} s)")


async def pools(run: Run) -> tuple[Pool, Pool]:
    """Fresh connection pools to the stub and the gateway."""
    targets = run.targets()
    return Pool(targets.direct), Pool(targets.gateway)


async def throughput(run: Run) -> Json:
    """2. The generator check, then the search for the best clean rate (one worker)."""
    direct, gateway = await pools(run)
    try:
        capacity = await load.generator_capacity(
            direct, run.bodies.distinct, GENERATOR_RATES, min(run.plan.step_s, 2.0), log
        )
        search = await load.find_max_rate(
            direct,
            gateway,
            run.bodies.distinct,
            step_s=run.plan.step_s,
            warmup_s=run.plan.warmup_s,
            refine=run.plan.refine,
            rates=run.plan.rates,
            log=log,
            settle=run.settle,
            gateway_cpu=run.gateway_cpu,
            services_cpu=run.services_cpu,
            gateway_waited=run.gateway_waited,
        )
    finally:
        await direct.aclose()
        await gateway.aclose()
    return {**search, "generator": capacity}


def best_rate(run: Run, default: float = 500.0) -> float:
    """The one-worker search's best rate, or ``default`` if there is none yet."""
    best = report.dig(run.results, "throughput.best_rps")
    return float(best) if isinstance(best, int | float) and best > 0 else default


async def soak(run: Run) -> Json:
    """5. Half the best rate for ``--soak-s`` seconds; memory sampled throughout and after."""
    assert run.sampler is not None and run.gateway is not None
    rate = run.plan.soak_rate or max(100.0, round(best_rate(run) / 2 / 50) * 50)
    _, gateway = await pools(run)
    try:
        result = await load.soak(
            gateway,
            run.bodies.distinct,
            rate,
            run.plan.soak_s,
            run.sampler,
            run.plan.soak_window_s,
            log,
        )
    finally:
        await gateway.aclose()
    await asyncio.sleep(2)
    _, largest = run.sampler.sample()
    run.results.setdefault("rss", {})["after_soak_mb"] = round(largest, 1)
    return result


async def profile(run: Run) -> Json:
    """Where the gateway's time goes at 70% of its best rate (py-spy, if installed)."""
    from bench import profile as spy
    from bench.openloop import run_step

    assert run.gateway is not None
    if spy.py_spy() is None:
        return {"note": spy.PY_SPY_HINT, "top": []}
    rate = run.args.profile_rate or (round(best_rate(run) * 0.7 / 50) * 50 or 300)
    out = run.run_dir / "profile.txt"
    _, gateway = await pools(run)
    try:
        await gateway.warm(8)
        recorder = spy.start_record(run.gateway.started.pid, run.plan.profile_s, out)
        await run_step(gateway, run.bodies.distinct, rate, run.plan.profile_s + 1)
        _, err = await asyncio.to_thread(recorder.communicate, None, 60)
    finally:
        await gateway.aclose()
    if not out.exists():
        return {"note": f"py-spy failed: {err.decode(errors='replace')[-500:]}", "top": []}
    samples, top = spy.top_functions(out.read_text(errors="replace"))
    return {
        "note": f"{samples} samples over {run.plan.profile_s:g} s at {rate} req/s (open loop); "
        "self = on top of the stack, total = anywhere in it; idle time excluded.",
        "rate": rate,
        "samples": samples,
        "top": top,
    }


async def wrk(run: Run) -> Json:
    """Closed-loop peak (wrk) for the stub and the gateway, distinct prompts."""
    assert run.stub is not None and run.gateway is not None
    results: Json = {}
    for side, base, path, key in (
        ("direct", run.stub.url, "/fast" + stack.CHAT, None),
        ("gateway", f"http://{stack.HOST}:{run.gateway.port}", stack.CHAT, run.gateway.key),
    ):
        script = run.run_dir / f"wrk-{side}.lua"
        script.write_text(load.wrk_script(run.bodies.run_id, path, key))
        runs = []
        for connections in run.plan.wrk_connections:
            cpu = run.gateway_cpu() if side == "gateway" else 0.0
            found = await asyncio.to_thread(
                load.run_wrk, base + path, script, connections, run.plan.wrk_s
            )
            if side == "gateway" and found.get("requests"):
                # Closed loop keeps the gateway busy: its CPU per request at its warmest.
                used = run.gateway_cpu() - cpu
                found["gateway_cpu_us_per_request"] = round(used / found["requests"] * 1e6, 1)
            runs.append(found)
        results[side] = runs
    return results


async def reference(run: Run) -> Json:
    """The issue's reference proxy, a bare FastAPI + aiohttp passthrough, measured as the
    gateway is (added latency, streams fast and paced, a closed-loop peak), on the same host
    minutes apart: what any Python proxy pays on this machine, before doing any work."""
    assert run.stub is not None
    proxy = stack.start_passthrough(run.procs, run.stub.url)
    try:
        targets = measure.Targets(
            direct=run.stub.target("/fast"),
            gateway=proxy.target("/fast"),
            direct_paced=run.stub.target("/real"),
            gateway_paced=proxy.target("/real"),
        )
        plan, bodies = run.plan, run.bodies
        latency = await measure.added_latency(targets, bodies, plan.rounds)
        fast = await measure.streaming(targets, bodies, plan.stream_rounds, paced=False)
        paced = await measure.streaming(targets, bodies, plan.paced_rounds, paced=True)
        script = run.run_dir / "wrk-passthrough.lua"
        script.write_text(load.wrk_script(bodies.run_id, "/fast" + stack.CHAT, None))
        pids = process_tree(proxy.started.pid)
        cpu = cpu_seconds(pids)
        closed = await asyncio.to_thread(
            load.run_wrk,
            f"http://{stack.HOST}:{proxy.port}/fast{stack.CHAT}",
            script,
            plan.wrk_connections[0],
            plan.wrk_s,
        )
        if closed.get("requests"):
            used = cpu_seconds(pids) - cpu
            closed["cpu_us_per_request"] = round(used / closed["requests"] * 1e6, 1)
    finally:
        run.procs.stop(proxy.started)
    keep = ("direct_ms", "gateway_ms", "added_ms")
    return {
        "proxy": "bench/passthrough.py: FastAPI + aiohttp, body forwarded as bytes, nothing else",
        "latency": {k: latency[k] for k in keep},
        "streaming": {
            "fast": {"ttft": fast["ttft"]},
            "paced": {"ttft": paced["ttft"], "gap": paced["gap"]},
        },
        "wrk": closed,
    }


async def workers(run: Run, one_worker_best: float | None) -> Json:
    """7. The search again against ``--workers 2``; the ratio to one worker."""
    assert run.stub is not None and run.policy is not None
    if run.backends.redis_url is None:
        return {"note": "needs Redis (not run with --embedded)"}
    gateway = stack.start_gateway(
        run.procs, run.backends, run.stub.url, run.policy.directory, workers=2, name="gateway-w2"
    )
    run.gateway = gateway
    try:
        direct, pool = await pools(run)
        try:
            search = await load.find_max_rate(
                direct,
                pool,
                run.bodies.distinct,
                step_s=run.plan.step_s,
                warmup_s=run.plan.warmup_s,
                refine=run.plan.refine,
                rates=run.plan.rates,
                log=log,
                settle=run.settle,
                gateway_cpu=run.gateway_cpu,
                services_cpu=run.services_cpu,
                gateway_waited=run.gateway_waited,
            )
        finally:
            await direct.aclose()
            await pool.aclose()
    finally:
        run.procs.stop(gateway.started)
    best = float(search["best_rps"])
    ratio = best / one_worker_best if one_worker_best else None
    return {"workers": 2, "best_rps": best, "ratio": ratio, "search": search}


async def litellm(run: Run) -> Json:
    """Optional: LiteLLM's proxy on the same stub (``--litellm-python``)."""
    from bench import litellm_proxy

    assert run.stub is not None
    python = run.args.litellm_python
    if not python:
        return {"note": litellm_proxy.HINT}
    return await litellm_proxy.compare(run, python, log)
