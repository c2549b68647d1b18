"""``tollgate bench URL``: load-test an OpenAI-compatible endpoint (the gateway or an upstream).

Reports TTFT, time per output token and latency percentiles, requests/s, output tokens/s and
goodput against an SLO, as a table or JSON on stdout; a progress bar goes to stderr (when it is
a terminal, or with ``--progress``). Ctrl-C stops sending and reports what finished; a second
Ctrl-C abandons the requests in flight.

Measuring a GPU pool for the TCO model: run it against the pool (or the gateway routed to it)
with enough concurrency to saturate it, and divide the output tokens/s by its GPUs
(``--gpus N`` prints that figure as ``tokens_per_s_per_gpu``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:
    # At run time the load generator is imported by the functions that use it: every `tollgate`
    # command imports this module, and `tollgate serve` would otherwise keep aiohttp (~8 MB
    # resident) that only the load generator uses for as long as it serves.
    from gateway.loadgen import BenchConfig, Distribution, Progress, Runner

_BAR = 24


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``tollgate`` parser."""
    parser = commands.add_parser(
        "bench",
        help="load-test an OpenAI-compatible endpoint: TTFT, time per token, goodput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="OpenAI base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", help="bearer key (default: $OPENAI_API_KEY)")
    parser.add_argument("--model", default="chat", help="the model (a gateway route) (chat)")
    parser.add_argument(
        "--endpoint", choices=("chat", "completions"), default="chat", help="API to call (chat)"
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rate", type=_positive_float, help="open loop: requests per second")
    load.add_argument(
        "--concurrency", type=_positive_int, help="closed loop: requests in flight (default 1)"
    )
    parser.add_argument(
        "--arrival",
        choices=("poisson", "uniform"),
        default="poisson",
        help="open loop arrival process (poisson)",
    )
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--duration", type=_positive_float, help="seconds to send for (default 30)")
    span.add_argument("--requests", type=_positive_int, help="number of requests to send")
    parser.add_argument(
        "--prompt-tokens",
        type=_distribution,
        default="200",  # argparse passes a string default through `type` too
        help="prompt length: N, MEAN:STDDEV or MIN-MAX (200)",
    )
    parser.add_argument(
        "--output-tokens",
        type=_distribution,
        default="64",
        help="max_tokens per request: N, MEAN:STDDEV or MIN-MAX (64)",
    )
    parser.add_argument(
        "--stream", action=argparse.BooleanOptionalAction, default=True, help="stream (yes)"
    )
    parser.add_argument("--slo-ttft-ms", type=_positive_float, help="goodput: TTFT bound (ms)")
    parser.add_argument("--slo-total-ms", type=_positive_float, help="goodput: latency bound (ms)")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of unmeasured load (0)")
    parser.add_argument("--timeout", type=_positive_float, default=300.0, help="per request (300)")
    parser.add_argument(
        "--max-connections", type=_positive_int, default=1024, help="connection pool size (1024)"
    )
    parser.add_argument("--seed", type=int, help="seed for lengths and arrivals")
    parser.add_argument(
        "--ignore-eos", action="store_true", help="ask vLLM/TGI for exactly max_tokens tokens"
    )
    parser.add_argument(
        "--gpus", type=_positive_int, default=1, help="GPUs behind the endpoint, for per-GPU tok/s"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    parser.set_defaults(run=run)


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The run the arguments describe (ValueError when they do not make one)."""
    from gateway.loadgen import BenchConfig

    return BenchConfig(
        url=args.url,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or None,
        model=args.model,
        endpoint=args.endpoint,
        rate=args.rate,
        concurrency=None if args.rate is not None else (args.concurrency or 1),
        arrival=args.arrival,
        duration_s=args.duration if args.requests is None else None,
        requests=args.requests,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        stream=args.stream,
        slo_ttft_ms=args.slo_ttft_ms,
        slo_total_ms=args.slo_total_ms,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        max_connections=args.max_connections,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when at least one request succeeded, 1 otherwise, 2 on bad input."""
    from gateway.loadgen import render_table

    if args.duration is None and args.requests is None:
        args.duration = 30.0
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"tollgate bench: {exc}", file=sys.stderr)
        return 2
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    print(f"tollgate bench: {config.describe()}", file=sys.stderr)
    report = _run_loop(_bench(config, args.gpus, sys.stderr if show_progress else None))
    if args.output is not None:
        args.output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.format == "json":
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_table(report))
    sys.stdout.flush()
    return 0 if report["requests"]["ok"] else 1


def _run_loop(main: Any) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # the standard loop measures the same things, a little more slowly
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result: dict[str, Any] = runner.run(main)
        return result


async def _bench(config: BenchConfig, gpus: int, progress_to: TextIO | None) -> dict[str, Any]:
    from gateway.loadgen import Runner, summarize

    runner = Runner(config)
    loop = asyncio.get_running_loop()
    interrupts = 0

    def interrupted() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print("\ntollgate bench: stopping; Ctrl-C again to abandon", file=sys.stderr)
            runner.stop()
        else:
            runner.abort()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted)
    bar = asyncio.create_task(_show_progress(runner, progress_to)) if progress_to else None
    try:
        result = await runner.run()
    finally:
        if bar is not None:
            bar.cancel()
            await asyncio.gather(bar, return_exceptions=True)
            assert progress_to is not None
            progress_to.write("\r\033[K")
            progress_to.flush()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    return summarize(config, result, gpus)


async def _show_progress(runner: Runner, out: TextIO) -> None:
    while True:
        out.write("\r" + progress_line(runner.progress()) + "\033[K")
        out.flush()
        await asyncio.sleep(0.25)


def progress_line(p: Progress) -> str:
    """``[#########---------------]  38%  measure  114 done  0 err  6 in flight  11.4 s``."""
    filled = round(p.fraction * _BAR)
    return (
        f"[{'#' * filled}{'-' * (_BAR - filled)}] {p.fraction:4.0%}  {p.phase:<7}  "
        f"{p.done} done  {p.errors} err  {p.in_flight} in flight  {p.elapsed_s:.1f} s"
    )


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _distribution(text: str) -> Distribution:
    from gateway.loadgen import Distribution

    try:
        return Distribution.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
