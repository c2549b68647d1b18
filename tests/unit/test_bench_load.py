"""The harness's load verdicts, wrk parsing, memory growth, process helpers and plan."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import pytest

from bench.load import (
    bisect_rate,
    generator_keeps_up,
    held,
    parse_wrk,
    rss_growth,
    step_cost,
    verdict,
    wrk_script,
)
from bench.openloop import StepResult
from bench.plan import SECTIONS, Plan
from bench.procs import (
    HostTicks,
    cpu_seconds,
    parent_of,
    pids_named,
    process_tree,
    rss_mb,
    run_queue_seconds,
)
from bench.stats import summarize


def step(
    rate: float,
    p99_ms: float,
    *,
    achieved: float | None = None,
    errors: int = 0,
    aborted: bool = False,
) -> StepResult:
    planned = int(rate)
    latency = summarize([p99_ms * 0.5] * 98 + [p99_ms] * 2)
    return StepResult(
        target="t",
        offered_rps=rate,
        duration_s=1.0,
        planned=planned,
        sent=planned,
        ok=planned - errors,
        errors=errors,
        unfinished=0,
        aborted=aborted,
        achieved_rps=rate if achieved is None else achieved,
        latency_ms=latency,
        service_ms=latency,
        lag_ms=summarize([0.1]),
        connections=4,
        statuses={200: planned - errors},
    )


def test_the_generator_keeps_up_when_the_stub_step_is_clean_and_fast() -> None:
    assert generator_keeps_up(step(1000, 1.0))
    assert not generator_keeps_up(step(1000, 9.0))
    assert not generator_keeps_up(step(1000, 1.0, achieved=800))
    assert not generator_keeps_up(step(1000, 1.0, errors=1))


def test_verdict() -> None:
    direct = step(1000, 1.0)
    assert verdict(direct, step(1000, 5.0), 10.0) == (True, "ok")
    ok, why = verdict(direct, step(1000, 12.0), 10.0)
    assert not ok and why.startswith("added p99 ")
    assert verdict(direct, step(1000, 2.0, errors=3), 10.0) == (False, "gateway errors or overload")
    assert verdict(direct, step(1000, 2.0, aborted=True), 10.0)[0] is False
    assert verdict(direct, step(1000, 2.0, achieved=900), 10.0) == (
        False,
        "gateway below offered rate",
    )
    assert verdict(step(1000, 30.0), step(1000, 2.0), 10.0) == (False, "generator-bound")


def test_a_failed_step_is_measured_again_and_the_majority_decides() -> None:
    assert held([True]) is True  # a first pass decides
    assert held([False]) is None  # one failure: measure again
    assert held([False, True]) is None
    assert held([False, False]) is False
    assert held([False, True, True]) is True
    assert held([False, True, False]) is False
    assert held([False, False], tries=5) is None  # 3 of 5 needed either way
    assert held([False, True, True], tries=5) is None


def test_bisect_rate() -> None:
    assert bisect_rate(1000, 1500) == 1250
    assert bisect_rate(1000, 1100) == 1050
    assert bisect_rate(1000, 1050) is None  # nothing between on a 50 req/s grid


def test_rss_growth_judges_after_the_warm_up_third() -> None:
    series = [(float(t), 100.0 + (5.0 if t >= 3 else 0.0)) for t in range(9)]
    growth = rss_growth(series)
    assert growth["rss_start_mb"] == 100.0
    assert growth["rss_warm_mb"] == 105.0
    assert growth["growth_mb"] == 0.0
    assert growth["slope_mb_per_min"] == 0.0
    leaking = rss_growth([(float(t), 100.0 + t) for t in range(12)])  # 1 MB/s
    assert leaking["slope_mb_per_min"] == pytest.approx(60.0)
    assert rss_growth([(0.0, 1.0)])["growth_mb"] is None


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   9.54ms   88.44%
  Latency Distribution
     50%  617.00us
     75%    1.02ms
     90%    1.50ms
     99%    3.35ms
  158572 requests in 3.00s, 57.92MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  52844.76
Transfer/sec:     19.30MB
"""


def test_parse_wrk() -> None:
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed["rps"] == 52844.76
    assert parsed["latency_ms"] == {"p50": 0.617, "p75": 1.02, "p90": 1.5, "p99": 3.35}
    assert parsed["non_2xx"] == 7
    assert parsed["socket_errors"] == 3
    assert parsed["requests"] == 158572
    assert parse_wrk("garbage")["rps"] is None


def test_wrk_script_sends_distinct_prompts_with_the_key() -> None:
    script = wrk_script("abcd", "/v1/chat/completions", "tg-key")
    assert "counter = counter + 1" in script
    assert '"Bearer tg-key"' in script and "bench abcd wrk" in script
    assert "Authorization" not in wrk_script("abcd", "/fast/v1/chat/completions", None)


def test_parent_of_reads_stat_lines_with_odd_command_names() -> None:
    assert parent_of("123 (python) S 45 123 123 0") == 45
    assert parent_of("123 (my (odd) name) R 7 1 1 0") == 7


def test_process_tree_and_rss_of_this_process() -> None:
    assert process_tree(os.getpid())[0] == os.getpid()
    assert rss_mb(os.getpid()) > 1
    assert math.isnan(rss_mb(2**22 + 12345))  # above pid_max: no such process


def _args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "quick": False,
        "only": None,
        "skip": None,
        "litellm_python": None,
        "rates": None,
        "max_rate": math.inf,
        "big_tokens": 100_000,
        "step_s": None,
        "soak_s": None,
        "soak_rate": None,
    }
    return argparse.Namespace(**(values | overrides))


def test_plan_defaults_full_and_quick() -> None:
    full = Plan.from_args(_args())
    quick = Plan.from_args(_args(quick=True))
    assert full.mode == "full" and quick.mode == "quick"
    assert full.soak_s == 300.0  # the 5 minutes
    assert quick.soak_s < full.soak_s and quick.step_s < full.step_s
    assert "litellm" not in full.sections  # only with --litellm-python
    assert "litellm" in Plan.from_args(_args(litellm_python="/x/python")).sections
    assert set(full.sections) == set(SECTIONS) - {"litellm"}


def test_plan_flags() -> None:
    plan = Plan.from_args(_args(only="latency,soak", skip="soak", soak_s=42.0, max_rate=1000))
    assert plan.sections == ("latency",)
    assert plan.soak_s == 42.0
    assert max(plan.rates) == 1000
    with pytest.raises(SystemExit, match="unknown sections"):
        Plan.from_args(_args(only="latency,nonsense"))


def test_a_steps_cost_is_the_gateways_cpu_per_answer_and_the_hosts_steal() -> None:
    host = HostTicks.now()
    assert host.total > 0  # this machine has a /proc/stat
    assert host.steal_share_since(host) is None  # no time passed: no share
    later = HostTicks(host.total + 200, host.steal + 30)
    assert later.steal_share_since(host) == pytest.approx(0.15)
    used = iter([12.5])  # CPU seconds after the step; 12.0 before it
    earlier = HostTicks(host.total - 100, host.steal)  # 100 ticks before now, none stolen since
    cost = step_cost(step(1000, 2.0), 12.0, lambda: next(used), earlier)
    assert cost["gateway_cpu_us_per_request"] == pytest.approx(500.0)  # 0.5 s over 1000 answers
    assert 0.0 <= cost["host_steal_pct"] <= 100.0  # whatever was stolen meanwhile
    assert "gateway_cpu_us_per_request" not in step_cost(step(1000, 2.0), 0.0, None, host)


def test_a_steps_cost_includes_the_local_services_cpu_and_how_busy_the_machine_was() -> None:
    host = HostTicks.now()
    # 400 ticks: 100 idle, 20 stolen, so 280 ran something.
    later = HostTicks(host.total + 400, host.steal + 20, host.idle + 100)
    assert later.busy_share_since(host) == pytest.approx(0.7)
    assert host.busy_share_since(host) is None
    before = {"redis": 1.0, "postgres": 2.0}
    after = {"redis": 1.1, "postgres": 2.05, "other": 9.0}  # "other" was not read before
    earlier = HostTicks(host.total - 100, host.steal, host.idle)  # 100 ticks before now
    cost = step_cost(step(1000, 2.0), 0.0, None, earlier, before, lambda: after)
    assert cost["redis_cpu_us_per_request"] == pytest.approx(100.0)  # 0.1 s over 1000 answers
    assert cost["postgres_cpu_us_per_request"] == pytest.approx(50.0)
    assert "other_cpu_us_per_request" not in cost
    assert 0.0 <= cost["machine_busy_pct"] <= 100.0
    assert "redis_cpu_us_per_request" not in step_cost(step(1000, 2.0), 0.0, None, host)


def test_a_steps_cost_includes_how_long_the_gateway_waited_for_a_core() -> None:
    host = HostTicks.now()
    waited = iter([0.35])  # seconds after the step; 0.3 before it
    cost = step_cost(step(1000, 2.0), 0.0, None, host, None, None, 0.3, lambda: next(waited))
    assert cost["gateway_waited_us_per_request"] == pytest.approx(50.0)  # 0.05 s over 1000
    assert "gateway_waited_us_per_request" not in step_cost(step(1000, 2.0), 0.0, None, host)


def test_run_queue_seconds_of_processes_that_outnumber_the_cores() -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat"):
        pytest.skip("this kernel keeps no scheduler statistics")
    cores = len(os.sched_getaffinity(0))
    if cores > 16:
        pytest.skip("too many cores to outnumber cheaply")
    # Three spinning processes per core: each one is always either running or waiting for a
    # core, so their waits and their CPU time add up to their number times the time elapsed.
    spin = "import time\nend = time.monotonic() + 5\nwhile time.monotonic() < end: pass"
    started = time.monotonic()
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(3 * cores)]
    try:
        pids = [p.pid for p in spinners]
        time.sleep(1.0)
        waited, ran = run_queue_seconds(pids), cpu_seconds(pids)
        elapsed = time.monotonic() - started
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert waited >= 0.5 * elapsed  # with two of every three waiting, far more than this
    assert waited + ran == pytest.approx(3 * cores * elapsed, rel=0.15)
    assert run_queue_seconds(pids) == 0.0  # gone: nothing to read


def test_pids_named_finds_processes_by_their_command_name() -> None:
    with open(f"/proc/{os.getpid()}/stat", encoding="ascii", errors="replace") as stat:
        line = stat.read()
    own = line[line.find("(") + 1 : line.rfind(")")]
    assert os.getpid() in pids_named({own})
    assert pids_named({"no-such-command-here"}) == []


def test_cpu_seconds_of_this_process_grow_with_work() -> None:
    before = cpu_seconds([os.getpid()])
    deadline = before + 0.05
    while cpu_seconds([os.getpid()]) < deadline:
        sum(range(10_000))
    assert cpu_seconds([os.getpid()]) >= deadline
