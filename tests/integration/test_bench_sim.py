"""``tollgate bench`` against a real ``tollgate sim`` process with a known TTFT and decode speed.

The sim answers its first token 100 ms after a request arrives and then 50 tokens/s, paced
against the clock. The bench must report a TTFT no lower than 100 ms (strictly: the token
cannot come earlier) and not much higher, and a decode rate near 50 tokens/s. The upper bounds
are generous on purpose: this checks the tool's arithmetic, not the machine's speed.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.cli import bench
from tests.support.sim_process import sim_process


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with sim_process("--ttft-ms", "100", "--tokens-per-s", "50") as url:
        yield url


def tollgate_bench(*argv: str) -> int:
    """``tollgate bench ARGV...`` in process (the module's ``register`` on a fresh parser)."""
    parser = argparse.ArgumentParser(prog="tollgate")
    bench.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    code: int = args.run(args)
    return code


def json_report(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert tollgate_bench(*argv, "--format", "json") == 0
    report: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return report


def test_closed_loop_measures_the_sims_ttft_and_speed(
    sim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = json_report(
        capsys,
        sim_url,
        "--concurrency",
        "4",
        "--requests",
        "24",
        "--output-tokens",
        "21",
        "--prompt-tokens",
        "150:30",
        "--warmup",
        "1",
        "--slo-ttft-ms",
        "250",
        "--seed",
        "7",
    )
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    assert report["requests"] == {"sent": 24, "ok": 24, "errors": 0, "errors_by_type": {}}
    ttft = report["ttft_ms"]
    assert ttft["min"] >= 100.0  # the sim cannot answer sooner
    assert ttft["p50"] < 400.0
    # 21 tokens: the first at 100 ms, then 20 more at 50 tokens/s.
    assert report["tokens"]["output_mean"] == 21
    assert 40.0 <= report["decode_tokens_per_s_per_stream"] <= 60.0
    assert 16.0 <= report["tpot_ms"]["p50"] <= 25.0
    assert report["latency_ms"]["min"] >= 100.0 + 20 * 20 - 5
    assert 100 <= report["tokens"]["prompt_mean"] <= 200
    assert report["throughput"]["output_tokens_per_s"] > 0
    assert report["goodput"]["slo"] == {"ttft_ms": 250.0, "total_ms": None}
    assert 0.0 <= report["goodput"]["ratio"] <= 1.0
    assert report["load"]["mode"] == "closed" and report["load"]["concurrency"] == 4


def test_open_loop_holds_the_rate(sim_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = json_report(
        capsys,
        sim_url,
        "--rate",
        "20",
        "--arrival",
        "uniform",
        "--duration",
        "3",
        "--output-tokens",
        "4",
    )
    assert report["requests"]["sent"] == 60
    assert report["requests"]["ok"] == 60
    assert report["load"]["sent_per_s"] == pytest.approx(20.0, rel=0.15)
    assert report["ttft_ms"]["min"] >= 100.0

    poisson = json_report(
        capsys, sim_url, "--rate", "20", "--duration", "3", "--output-tokens", "4", "--seed", "3"
    )
    assert 30 <= poisson["requests"]["sent"] <= 100  # Poisson around 60
    assert poisson["load"]["arrival"] == "poisson"
    print("open loop:", report["load"], report["throughput"])


def test_table_and_progress(sim_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        tollgate_bench(
            sim_url,
            "--requests",
            "3",
            "--output-tokens",
            "6",
            "--slo-ttft-ms",
            "250",
            "--gpus",
            "2",
            "--progress",
        )
        == 0
    )
    out, err = capsys.readouterr()
    print(out)
    assert out.startswith("tollgate bench  " + sim_url + "/chat/completions")
    for line in ("ttft (ms)", "time/output tok (ms)", "latency (ms)", "goodput      "):
        assert line in out
    assert "decode throughput per stream:" in out
    assert "tokens_per_s_per_gpu:" in out and "/ 2 GPUs" in out
    assert "] 100%" in err or "%  measure" in err  # the bar was drawn on stderr
    assert "[#" not in out


def test_failures_are_reported_by_type(capsys: pytest.CaptureFixture[str]) -> None:
    with sim_process("--error-rate", "1") as url:
        assert tollgate_bench(url, "--requests", "3", "--format", "json") == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["requests"]["errors_by_type"] == {"http_500:sim_error": 3}
    assert report["ttft_ms"] is None
