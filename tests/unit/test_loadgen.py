"""The load tester's pure parts: configuration, prompt lengths, statistics and the report."""

from __future__ import annotations

import random

import orjson
import pytest

from gateway import tokens
from gateway.cli.bench import progress_line
from gateway.loadgen import BenchConfig, Distribution, Progress, RunResult, render_table, summarize
from gateway.loadgen.client import Sample
from gateway.loadgen.prompts import WORDS, PromptFactory
from gateway.loadgen.report import percentile

URL = "http://127.0.0.1:9/v1"


def test_distributions_parse_and_draw() -> None:
    rng = random.Random(3)
    fixed = Distribution.parse("200")
    assert {fixed.draw(rng) for _ in range(50)} == {200}
    ranged = Distribution.parse("100-300")
    draws = [ranged.draw(rng) for _ in range(2000)]
    assert min(draws) >= 100 and max(draws) <= 300
    assert 180 < sum(draws) / len(draws) < 220
    normal = Distribution.parse("200:50")
    draws = [normal.draw(rng) for _ in range(4000)]
    mean = sum(draws) / len(draws)
    stddev = (sum((d - mean) ** 2 for d in draws) / len(draws)) ** 0.5
    assert 195 < mean < 205 and 45 < stddev < 55
    wide = Distribution.parse("2:50")
    assert min(wide.draw(rng) for _ in range(500)) == 1
    assert [str(Distribution.parse(t)) for t in ("64", "64:16", "10-20")] == [
        "64",
        "64:16",
        "10-20",
    ]
    for bad in ("0", "-5", "abc", "300-100", "10:-1", "0:5", ""):
        with pytest.raises(ValueError):
            Distribution.parse(bad)


def test_config_needs_one_load_shape_and_one_span() -> None:
    BenchConfig(URL, rate=5, duration_s=1)
    BenchConfig(URL, concurrency=2, requests=10)
    for bad in (
        {"duration_s": 1},  # no load shape
        {"rate": 5, "concurrency": 2, "duration_s": 1},
        {"rate": 5},  # no span
        {"rate": 5, "duration_s": 1, "requests": 3},
        {"rate": 0, "duration_s": 1},
        {"concurrency": 0, "requests": 1},
    ):
        with pytest.raises(ValueError):
            BenchConfig(URL, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BenchConfig("127.0.0.1:8080", rate=1, requests=1)


@pytest.mark.parametrize(
    ("url", "endpoint", "expected"),
    [
        ("http://h:8080/v1", "chat", "http://h:8080/v1/chat/completions"),
        ("http://h:8080/v1/", "completions", "http://h:8080/v1/completions"),
        ("http://h:8080", "chat", "http://h:8080/v1/chat/completions"),
        ("https://h/openai/v1", "chat", "https://h/openai/v1/chat/completions"),
    ],
)
def test_endpoint_url(url: str, endpoint: str, expected: str) -> None:
    config = BenchConfig(url, endpoint=endpoint, concurrency=1, requests=1)  # type: ignore[arg-type]
    assert config.endpoint_url == expected


@pytest.mark.parametrize("target", [20, 200, 1000])
def test_prompts_have_about_the_asked_length(target: int) -> None:
    assert all(tokens.count_text(" " + w, "gpt-4o-mini") == 1 for w in WORDS)
    config = BenchConfig(
        URL, concurrency=1, requests=1, prompt_tokens=Distribution.parse(str(target))
    )
    factory = PromptFactory(config, random.Random(1))
    prompts = set()
    for index in (1, 42, 999):
        body, output = factory.body(index)
        request = orjson.loads(body)
        assert output == 64 and request["max_tokens"] == 64
        assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
        counted = tokens.count_chat(request["messages"], "gpt-4o-mini")
        assert abs(counted - target) <= max(3, target * 0.02), counted
        prompts.add(request["messages"][0]["content"])
    assert len(prompts) == 3  # never the same prompt twice


def test_completions_body() -> None:
    config = BenchConfig(
        URL, endpoint="completions", concurrency=1, requests=1, stream=False, ignore_eos=True
    )
    request = orjson.loads(PromptFactory(config, random.Random(1)).body(0)[0])
    assert isinstance(request["prompt"], str) and "messages" not in request
    assert "stream" not in request and request["ignore_eos"] is True
    assert abs(tokens.count_text(request["prompt"], "gpt-4o-mini") - 200) <= 4


def test_percentile_interpolates() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 90) == 7.0


def sample(
    index: int,
    ttft: float | None,
    end: float,
    tokens_out: int = 11,
    error: str | None = None,
    scheduled: float = 0.0,
) -> Sample:
    return Sample(
        index,
        scheduled,
        False,
        sent=scheduled + 0.001,
        first_token=None if ttft is None else scheduled + ttft,
        last_token=None if ttft is None else scheduled + end - 0.001,
        end=scheduled + end,
        output_tokens=tokens_out,
        prompt_tokens=100,
        requested_tokens=11,
        error=error,
    )


def test_summary_numbers() -> None:
    config = BenchConfig(
        URL, rate=10, duration_s=1, slo_ttft_ms=250, slo_total_ms=1500, arrival="uniform"
    )
    samples = [
        sample(0, 0.1, 1.101, scheduled=0.0),  # meets both
        sample(1, 0.2, 1.201, scheduled=0.1),  # meets both
        sample(2, 0.3, 1.301, scheduled=0.2),  # TTFT too slow
        sample(3, 0.1, 2.001, scheduled=0.3),  # total too slow
        sample(4, None, 0.5, 0, error="http_429:insufficient_quota", scheduled=0.4),
    ]
    report = summarize(config, RunResult(samples, 0.0, 4.0, False), gpus=2)
    assert report["requests"] == {
        "sent": 5,
        "ok": 4,
        "errors": 1,
        "errors_by_type": {"http_429:insufficient_quota": 1},
    }
    assert report["duration_s"] == pytest.approx(4.0)
    assert report["throughput"]["requests_per_s"] == pytest.approx(1.0)
    assert report["throughput"]["output_tokens_per_s"] == pytest.approx(11.0)
    assert report["tokens_per_s_per_gpu"] == {"gpus": 2, "value": pytest.approx(5.5)}
    assert report["ttft_ms"]["p50"] == pytest.approx(150.0)
    assert report["ttft_ms"]["max"] == pytest.approx(300.0)
    # TPOT: (last - first) / 10 tokens; the first request: (1.1 - 0.1) / 10 = 100 ms.
    assert report["tpot_ms"]["min"] == pytest.approx(100.0)
    assert report["decode_tokens_per_s_per_stream"] == pytest.approx(
        1000 / report["tpot_ms"]["p50"]
    )
    assert report["goodput"]["met"] == 2
    assert report["goodput"]["ratio"] == pytest.approx(2 / 5)  # errors count as missed
    assert report["load"]["sent_per_s"] == pytest.approx(10.0)
    text = render_table(report)
    assert "goodput      40.0% of requests met ttft <= 250 ms and total <= 1500 ms" in text
    assert "decode throughput per stream:" in text
    assert "tokens_per_s_per_gpu: 5.5" in text
    assert "http_429:insufficient_quota: 1" in text
    orjson.dumps(report)  # JSON-ready as is


def test_summary_of_nothing() -> None:
    config = BenchConfig(URL, concurrency=1, requests=1)
    report = summarize(config, RunResult([], 0.0, 0.0, True))
    assert report["ttft_ms"] is None and report["goodput"] is None
    assert report["requests"]["ok"] == 0
    assert "[interrupted]" in render_table(report)


def test_progress_line() -> None:
    line = progress_line(Progress("measure", 5.0, 12, 1, 3, 10.0, True))
    assert line.startswith("[############------------]  50%  measure")
    assert "12 done  1 err  3 in flight" in line
    assert progress_line(Progress("drain", 11.0, 40, 0, 2, 10.0, True)).startswith(
        "[" + "#" * 24 + "] 100%"
    )
