"""The optional side-by-side: LiteLLM's proxy on the same stub, same load, no database.

LiteLLM is installed into a virtual environment of its own, never the project's::

    python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'
    .venv/bin/python -m bench.run --litellm-python /tmp/litellm-venv/bin/python

Its ``litellm`` CLI starts uvicorn with one worker; auth is a master key (no database, no Redis),
so it does strictly less per request than Tollgate's full path.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import load, measure, stack
from bench.client import Target, bearer
from bench.openloop import Pool
from bench.procs import free_port, wait_idle, wait_ready

if TYPE_CHECKING:
    from bench.sections import Run

HINT = (
    "not run: pass --litellm-python /tmp/litellm-venv/bin/python after "
    "python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'"
)
MASTER_KEY = "sk-bench-master"
RATES = (50.0, 100.0, 150.0, 200.0, 300.0, 400.0, 600.0, 800.0, 1000.0, 1500.0)

_CONFIG = """model_list:
  - model_name: chat
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {stub}/fast/v1
      api_key: none
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
  drop_params: true
"""


def config_yaml(stub_url: str) -> str:
    """The proxy's config: one model on the stub's fast path, a master key, no database."""
    return _CONFIG.format(stub=stub_url, key=MASTER_KEY)


async def compare(run: Run, python: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Start the proxy, measure latency and the best clean rate as for Tollgate, stop it."""
    assert run.stub is not None
    config = run.run_dir / "litellm.yaml"
    config.write_text(config_yaml(run.stub.url))
    port = free_port()
    exe = str(Path(python).with_name("litellm"))
    argv = [exe, "--config", str(config), "--host", stack.HOST, "--port", str(port)]
    argv += ["--num_workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    # No network at start-up (its price map is bundled), no telemetry, errors only in its log.
    env |= {
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    started = run.procs.start("litellm", argv, env)
    try:
        await asyncio.to_thread(wait_ready, started, stack.HOST, port, "/health/liveliness", 180)
        proxy = Target("litellm", stack.HOST, port, stack.CHAT, bearer(MASTER_KEY))
        direct = run.targets().direct
        paired = await measure.alternate(
            direct, proxy, run.bodies.distinct, rounds=max(100, run.plan.rounds // 10), warmup=20
        )
        latency = measure.compare(paired, lambda e: e.latency)
        pools = Pool(direct), Pool(proxy)

        async def settle() -> None:
            await asyncio.to_thread(wait_idle, started.pid)

        try:
            # LiteLLM adds more than 10 ms even at one request in flight, so it never passes
            # Tollgate's bound: its sustainable rate (every request answered, the offered rate
            # held, any latency) is what Tollgate's bounded rate is compared with. That favours
            # LiteLLM.
            search = await load.find_max_rate(
                *pools,
                run.bodies.distinct,
                step_s=run.plan.step_s,
                warmup_s=run.plan.warmup_s,
                max_added_p99_ms=math.inf,
                refine=run.plan.refine,
                rates=RATES,
                log=log,
                settle=settle,
            )
        finally:
            for pool in pools:
                await pool.aclose()
        script = run.run_dir / "wrk-litellm.lua"
        script.write_text(load.wrk_script(run.bodies.run_id, stack.CHAT, MASTER_KEY))
        url = f"http://{stack.HOST}:{port}{stack.CHAT}"
        wrk = await asyncio.to_thread(load.run_wrk, url, script, 16, run.plan.wrk_s)
    finally:
        run.procs.stop(started)
    ours = run.results.get("throughput", {}).get("best_rps")
    theirs = search["best_rps"]
    our_wrk = max(
        (r.get("rps") or 0 for r in run.results.get("wrk", {}).get("gateway", [])), default=0
    )
    return {
        "note": "LiteLLM proxy, 1 worker, master key, no database, same stub and load.",
        "latency": latency,
        "sustainable_rps": theirs,
        "ratio": (ours / theirs) if ours and theirs else None,
        "wrk": wrk,
        "wrk_ratio": (our_wrk / wrk["rps"]) if our_wrk and wrk.get("rps") else None,
        "search": search,
    }
