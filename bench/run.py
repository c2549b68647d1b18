"""``python -m bench.run`` (``make bench``): start everything, measure, write the results.

Full run (15-20 minutes; on a quiet machine)::

    .venv/bin/python -m bench.run

Quick check of the harness (2-3 minutes: short steps, a 20 s soak)::

    .venv/bin/python -m bench.run --quick

Every process started is stopped at the end, also on Ctrl-C or an error; the run's own Postgres
database and Redis keys are removed. Results: bench/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import idle_probe, measure, report, sections, services, stack
from bench.access_log import AccessLogReader
from bench.interrupt import StopSwitch
from bench.load import RssSampler
from bench.plan import SECTIONS, Plan
from bench.procs import Processes
from bench.sections import Run, log
from bench.workload import Bodies, filler_text

Json = dict[str, Any]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short steps, to check the harness")
    parser.add_argument("--soak-s", type=float, help="soak duration (300; --quick: 20)")
    parser.add_argument("--soak-rate", type=float, help="soak req/s (default: half the best rate)")
    parser.add_argument("--step-s", type=float, help="seconds per load step (8; --quick: 2)")
    parser.add_argument("--profile-rate", type=float, help="req/s while profiling (70%% of best)")
    parser.add_argument("--rates", help="comma-separated offered rates for the search")
    parser.add_argument("--max-rate", type=float, default=math.inf, help="cap on offered rates")
    parser.add_argument("--big-tokens", type=int, default=100_000, help="the big prompt's size")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument(
        "--policy",
        choices=("auto", "full", "core"),
        default="auto",
        help="auto: full if check-policy accepts it, else core",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="no Redis/Postgres: SQLite + in-process state (no workers section)",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("TOLLGATE_BENCH_REDIS_URL", services.DEFAULT_REDIS)
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TOLLGATE_BENCH_POSTGRES_URL", services.DEFAULT_POSTGRES),
        help="an admin connection; the bench creates its own database",
    )
    parser.add_argument("--database", default="tollgate_bench", help="the bench's database name")
    parser.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run directory")
    parser.add_argument("--litellm-python", help="a Python with litellm[proxy] (section litellm)")
    parser.add_argument(
        "--busy-poll-us",
        type=int,
        help="the gateway's TOLLGATE_BUSY_POLL_US (default: the gateway's own; 0 turns it off)",
    )
    parser.add_argument(
        "--gateway-python",
        help="the Python the gateway runs on (a venv with the gateway's dependencies, e.g. "
        "another Python version's); the stub and the load generator stay on this one",
    )
    parser.add_argument(
        "--gateway-src",
        type=Path,
        help="measure the gateway package in this directory instead (e.g. an older commit: "
        "git archive REV | tar -x -C DIR)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args(argv)


async def measure_all(run: Run) -> None:
    """Every section, in an order where each can use what the previous ones found."""
    plan, procs = run.plan, run.procs
    run.stub = stack.start_stub(procs, ttft_ms=20, tokens_per_s=200, tokens=16)
    run.doc["stub"] = {"url": run.stub.url, "tokens": 16, "paced": "ttft 20 ms, 200 tokens/s"}
    run.backends.data_dir.mkdir(parents=True, exist_ok=True)
    run.policy = stack.choose_policy(run.backends, run.stub.url, run.args.policy)
    run.doc["features"] = {
        "policy": run.policy.name,
        "declared": list(run.policy.features),
        "refused": run.policy.refused,
        "backends": "embedded" if run.args.embedded else "redis + postgres",
        "gateway_src": str(run.backends.gateway_src or stack.REPO),
        "busy_poll_us": run.backends.busy_poll_us,  # None: the gateway's default
        "gateway_python": stack.python_version(run.backends.gateway_python),
        "workers": 1,
    }
    log(f"policy: {run.policy.name} ({run.policy.directory})")
    try:
        run.gateway = stack.start_gateway(procs, run.backends, run.stub.url, run.policy.directory)
    except Exception as exc:
        if run.policy.name != "full" or run.args.policy == "full":
            raise
        # The schema accepted the policy but the running code did not: measure the core path.
        core = stack.choose_policy(run.backends, run.stub.url, "core")
        core.refused.append(f"the gateway did not start with the full policy: {exc}"[:1500])
        run.policy = core
        run.doc["features"].update(
            policy="core", declared=list(core.features), refused=core.refused
        )
        run.gateway = stack.start_gateway(procs, run.backends, run.stub.url, core.directory)
    gateway = run.gateway
    targets = run.targets()
    run.sampler = RssSampler(gateway.started.pid)

    # Warm up (imports, connection pools, tiktoken, caches), then memory at rest.
    await measure.alternate(
        targets.direct, targets.gateway, run.bodies.distinct, rounds=0, warmup=200
    )
    await asyncio.sleep(2)
    _, idle = run.sampler.sample()
    run.results["rss"] = {"idle_mb": round(idle, 1)}

    # The gateway's own share of each measured request (warm-up rounds included).
    own = AccessLogReader(gateway.started.stderr)

    async def latency() -> Json:
        own.mark()
        result = await measure.added_latency(targets, run.bodies, plan.rounds)
        result["gateway_own_ms"] = await own.overhead_ms()
        return result

    await run.section("latency", latency)

    async def streams() -> Json:
        own.mark()
        fast = await measure.streaming(targets, run.bodies, plan.stream_rounds, paced=False)
        fast["gateway_own_ms"] = await own.overhead_ms()
        paced = await measure.streaming(targets, run.bodies, plan.paced_rounds, paced=True)
        paced["gateway_own_ms"] = await own.overhead_ms()
        return {"fast": fast, "paced": paced}

    await run.section("streaming", streams)
    # Right after the gateway's own, so the host's phase is about the same for both.
    await run.section("reference", lambda: sections.reference(run))
    await run.section(
        "cache",
        lambda: measure.cache_hit(targets, run.bodies, plan.cache_rounds, run.upstream_calls),
    )
    if "bigprompt" in plan.sections:
        filler = await asyncio.to_thread(filler_text, plan.big_tokens)
        await run.section(
            "bigprompt", lambda: measure.big_prompt(targets, run.bodies, filler, plan.big_seconds)
        )

    load_started = time.monotonic()
    run.sampler.start()
    try:
        await run.section("throughput", lambda: sections.throughput(run))
    finally:
        await run.sampler.stop()
    _, peak = run.sampler.peak(load_started)
    run.results["rss"]["under_load_mb"] = None if math.isnan(peak) else round(peak, 1)
    await run.section("profile", lambda: sections.profile(run))
    await run.section("wrk", lambda: sections.wrk(run))
    await run.section("soak", lambda: sections.soak(run))
    run.doc["features"]["observed"] = observed(run)
    procs.stop(gateway.started)
    one_worker = report.dig(run.results, "throughput.best_rps")
    await run.section("workers", lambda: sections.workers(run, one_worker))
    await run.section("litellm", lambda: sections.litellm(run))


def observed(run: Run) -> Json:
    """What the gateway visibly did: cache headers, deployments chosen, keys in Redis."""
    found: Json = {}
    headers = report.dig(run.results, "latency.observed.headers") or {}
    cache = headers.get("x-tollgate-cache")
    found["cache header on misses"] = (
        ", ".join(f"{k}={v}" for k, v in (cache or {}).items()) or "none"
    )
    deployments = headers.get("x-tollgate-deployment") or {}
    found["deployments"] = ", ".join(f"{k}={v}" for k, v in deployments.items()) or "none"
    if run.backends.redis_url:
        found["redis keys"] = services.redis_keys(run.backends.redis_url, run.backends.redis_prefix)
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it completed (whether or not every target was met)."""
    args = parse_args(argv)
    plan = Plan.from_args(args)
    run_id = secrets.token_hex(4)
    run_dir = Path(tempfile.mkdtemp(prefix=f"tollgate-bench-{run_id}-"))
    started = time.time()
    doc: Json = {
        "schema": 1,
        "mode": plan.mode,
        "run_id": run_id,
        "machine": report.machine(stack.REPO),
        "plan": {k: getattr(plan, k) for k in plan.__slots__},
        "results": {},
        "errors": {},
    }
    database = None if args.embedded else services.BenchDatabase(args.postgres_url, args.database)
    backends = stack.Backends(
        redis_url=None if args.embedded else args.redis_url,
        redis_prefix=f"tollgate-bench:{run_id}:",
        database_url=database.url if database else None,
        data_dir=run_dir / "data",
        gateway_src=args.gateway_src.resolve() if args.gateway_src else None,
        busy_poll_us=args.busy_poll_us,
        gateway_python=args.gateway_python or sys.executable,
    )
    # Ctrl-C and SIGTERM stop the run: processes stopped, partial results written.
    stop = StopSwitch()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    failed = False
    log(f"tollgate bench ({plan.mode}), run {run_id}, logs in {run_dir}")
    try:
        if backends.redis_url:
            doc["machine"]["redis"] = services.check_redis(backends.redis_url)
        # Before anything else runs: what idling costs on this machine (see bench/idle_probe).
        doc["machine"]["idle"] = idle_probe.probe()
        if database is not None:
            database.recreate()
        with Processes(run_dir) as procs:
            run = Run(plan, args, procs, run_dir, doc, Bodies(run_id), backends, stop=stop)
            runner = _runner()
            runner(_measured(run))
    except (KeyboardInterrupt, asyncio.CancelledError):  # the latter: the task a signal cancelled
        stop.requested = True
    except Exception as exc:
        failed = True
        doc["errors"]["run"] = f"{type(exc).__name__}: {exc}"[:3000]
        log(f"run failed: {type(exc).__name__}: {exc}")
    finally:
        if stop.requested:
            doc["interrupted"] = True
            log("interrupted: stopping everything and writing partial results")
        _finish(doc, database, backends, args, started)
        if args.keep_logs or failed:
            log(f"logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


async def _measured(run: Run) -> None:
    """Every section, as the task a stop signal cancels."""
    task = asyncio.current_task()
    assert task is not None
    run.stop.attach(task)
    try:
        await measure_all(run)
    finally:
        run.stop.detach()


def _finish(
    doc: Json,
    database: services.BenchDatabase | None,
    backends: stack.Backends,
    args: argparse.Namespace,
    started: float,
) -> None:
    """Count what the gateway left behind, clean it up, evaluate, write the results."""
    with contextlib.suppress(Exception):
        if database is not None:
            doc.setdefault("features", {}).setdefault("observed", {})["ledger rows"] = (
                database.ledger_rows() or "no ledger table"
            )
            if not args.keep_db:
                database.drop()
    with contextlib.suppress(Exception):
        if backends.redis_url:
            services.redis_keys(backends.redis_url, backends.redis_prefix, delete=True)
    doc["loadavg_end"] = list(os.getloadavg())
    doc["duration_s"] = round(time.time() - started, 1)
    doc["targets"] = report.evaluate(doc["results"], doc["machine"]["nproc"])
    json_path, md_path = report.write(doc, args.out)
    log(f"results: {json_path} and {md_path}")
    print(md_path.read_text())


def _runner() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


if __name__ == "__main__":
    raise SystemExit(main())
