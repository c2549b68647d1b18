"""Turning samples into the numbers: percentiles, rates, goodput and errors; table and JSON.

Definitions (open loop: latencies count from the *scheduled* send time; closed loop: from the
send, see ``runner``):

* TTFT: until the first content token arrived (non-streamed: the whole answer).
* time per output token (TPOT): (last token - first token) / (output tokens - 1), streams only.
* latency: until the answer ended.
* requests/s and output tokens/s: successful requests (and their completion tokens, from the
  server's usage, else one per content chunk) over the measured span, which runs from the start
  of the measured part to the end of its last request.
* goodput: the share of *all* measured requests (errors included) that succeeded within every
  SLO bound given, and that count per second.
* decode throughput per stream: 1 / median TPOT, what one sequence gets; output tokens/s is what
  the endpoint delivered in total, the figure to divide by its GPUs for ``tokens_per_s_per_gpu``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from gateway.loadgen.client import Sample
from gateway.loadgen.config import BenchConfig
from gateway.loadgen.runner import RunResult


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linearly interpolated between closest ranks."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def distribution(values: Sequence[float]) -> dict[str, float] | None:
    """p50/p90/p99, mean, min and max of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "mean": sum(ordered) / len(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }


def summarize(config: BenchConfig, result: RunResult, gpus: int = 1) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    samples = result.samples
    ok = [s for s in samples if s.ok]
    span = max(result.finished - result.started, 1e-9)
    ms = 1000.0
    ttft = [t * ms for s in ok if (t := s.ttft_s) is not None]
    tpot = [t * ms for s in ok if (t := s.tpot_s) is not None]
    latency = [s.latency_s * ms for s in ok]
    send_lag = [(s.sent - s.scheduled) * ms for s in samples]
    output_tokens = sum(s.output_tokens for s in ok)
    prompt_counts = [s.prompt_tokens for s in ok if s.prompt_tokens is not None]
    tpot_stats = distribution(tpot)
    decode_per_stream = ms / tpot_stats["p50"] if tpot_stats and tpot_stats["p50"] > 0 else None
    output_per_s = output_tokens / span
    report: dict[str, Any] = {
        "url": config.endpoint_url,
        "model": config.model,
        "load": _load(config, samples),
        "interrupted": result.interrupted,
        "duration_s": span,
        "requests": {
            "sent": len(samples),
            "ok": len(ok),
            "errors": len(samples) - len(ok),
            "errors_by_type": dict(Counter(s.error for s in samples if s.error).most_common()),
        },
        "throughput": {
            "requests_per_s": len(ok) / span,
            "output_tokens_per_s": output_per_s,
            "prompt_tokens_per_s": sum(prompt_counts) / span,
        },
        "tokens": {
            "prompt_mean": sum(prompt_counts) / len(prompt_counts) if prompt_counts else None,
            "output_mean": output_tokens / len(ok) if ok else None,
            "output_requested_mean": (
                sum(s.requested_tokens for s in samples) / len(samples) if samples else None
            ),
        },
        "ttft_ms": distribution(ttft),
        "tpot_ms": tpot_stats,
        "latency_ms": distribution(latency),
        "send_lag_ms": distribution(send_lag),
        "decode_tokens_per_s_per_stream": decode_per_stream,
        "tokens_per_s_per_gpu": {"gpus": gpus, "value": output_per_s / gpus},
        "goodput": _goodput(config, samples, span),
    }
    return report


def _load(config: BenchConfig, samples: Sequence[Sample]) -> dict[str, Any]:
    sends = sorted(s.sent for s in samples)
    achieved = (len(sends) - 1) / (sends[-1] - sends[0]) if len(sends) > 1 else None
    return {
        "mode": "open" if config.open_loop else "closed",
        "rate": config.rate,
        "arrival": config.arrival if config.open_loop else None,
        "concurrency": config.concurrency,
        "sent_per_s": achieved,
        "prompt_tokens": str(config.prompt_tokens),
        "output_tokens": str(config.output_tokens),
        "stream": config.stream,
        "warmup_s": config.warmup_s,
    }


def _goodput(config: BenchConfig, samples: Sequence[Sample], span: float) -> dict[str, Any] | None:
    if config.slo_ttft_ms is None and config.slo_total_ms is None:
        return None
    met = 0
    for s in samples:
        if not s.ok:
            continue
        ttft = s.ttft_s
        if config.slo_ttft_ms is not None and (ttft is None or ttft * 1000 > config.slo_ttft_ms):
            continue
        if config.slo_total_ms is not None and s.latency_s * 1000 > config.slo_total_ms:
            continue
        met += 1
    return {
        "slo": {"ttft_ms": config.slo_ttft_ms, "total_ms": config.slo_total_ms},
        "met": met,
        "ratio": met / len(samples) if samples else None,
        "requests_per_s": met / span,
    }


def render_table(report: dict[str, Any]) -> str:
    """The report for people: a few lines and one latency table."""
    load, requests, throughput = report["load"], report["requests"], report["throughput"]
    lines = [f"tollgate bench  {report['url']}  model={report['model']}"]
    shape = (
        f"open loop {load['rate']:g} req/s ({load['arrival']})"
        if load["mode"] == "open"
        else f"closed loop, concurrency {load['concurrency']}"
    )
    sent = f", sent {load['sent_per_s']:.2f} req/s" if load["sent_per_s"] else ""
    lines.append(
        f"load         {shape}{sent}; prompt {load['prompt_tokens']} tok, output "
        f"{load['output_tokens']} tok, {'stream' if load['stream'] else 'no stream'}"
    )
    errors = ""
    if requests["errors"]:
        kinds = ", ".join(f"{k}: {v}" for k, v in requests["errors_by_type"].items())
        errors = f" ({kinds})"
    interrupted = "  [interrupted]" if report["interrupted"] else ""
    lines.append(
        f"requests     {requests['ok']} ok, {requests['errors']} errors{errors} in "
        f"{report['duration_s']:.1f} s{interrupted}"
    )
    lines.append(
        f"throughput   {throughput['requests_per_s']:.2f} req/s, "
        f"{throughput['output_tokens_per_s']:.1f} output tok/s, "
        f"{throughput['prompt_tokens_per_s']:.1f} prompt tok/s"
    )
    lines.append("")
    lines.append(f"{'':22}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}")
    for key, label in (
        ("ttft_ms", "ttft (ms)"),
        ("tpot_ms", "time/output tok (ms)"),
        ("latency_ms", "latency (ms)"),
        ("send_lag_ms", "send lag (ms)"),
    ):
        stats = report[key]
        cells = (
            "".join(f"{stats[c]:>10.1f}" for c in ("p50", "p90", "p99", "mean"))
            if stats
            else f"{'-':>10}" * 4
        )
        lines.append(f"{label:22}{cells}")
    lines.append("")
    goodput = report["goodput"]
    if goodput is not None and goodput["ratio"] is not None:
        bounds = " and ".join(
            f"{name} <= {limit:g} ms"
            for name, limit in (
                ("ttft", goodput["slo"]["ttft_ms"]),
                ("total", goodput["slo"]["total_ms"]),
            )
            if limit is not None
        )
        lines.append(
            f"goodput      {goodput['ratio']:.1%} of requests met {bounds} "
            f"({goodput['requests_per_s']:.2f} req/s)"
        )
    per_stream = report["decode_tokens_per_s_per_stream"]
    if per_stream is not None:
        lines.append(
            f"decode throughput per stream: {per_stream:.1f} tok/s "
            "(1 / median time per output token)"
        )
    per_gpu, gpus = report["tokens_per_s_per_gpu"], report["tokens_per_s_per_gpu"]["gpus"]
    lines.append(
        f"tokens_per_s_per_gpu: {per_gpu['value']:.1f}  (output "
        f"{throughput['output_tokens_per_s']:.1f} tok/s / {gpus} GPU{'s' if gpus != 1 else ''}; "
        "paste into the pool's pricing when this run saturated it; --gpus N sets the divisor)"
    )
    return "\n".join(lines) + "\n"
