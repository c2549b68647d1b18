"""Bytecode instructions the gateway runs per request: its Python work, measured without a clock.

On this project's VMs the same code's CPU per request moves threefold with the host's phase (see
the README), so the before/after of a small change drowns in the noise. The interpreter's
instruction count does not move with the host: ``python -m bench.opcount`` starts the stub and a
gateway with the full bench policy (Redis, Postgres), warms it up, then counts every bytecode
instruction the gateway executes (``sys.settrace`` with ``f_trace_opcodes``) over N sequential
requests, and prints the total per request and the functions with the most.

Instructions are not time: one that skips an empty list slot is far cheaper than one that
allocates, and C code (hiredis, orjson, tiktoken) counts as the one instruction that calls it. Use
the counts to find where the Python work is and to confirm a change removed some; time what
they point at. The counter slows the gateway down many times over while it runs, so nothing
else is measured meanwhile.

    .venv/bin/python -m bench.opcount [--requests 200] [--stream] [--gateway-src DIR]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

Key = tuple[str, int, str]  # file, first line, function
# The gateway process runs `python bench/opcount.py serve ...`: this file as a script, so the
# gateway's own import path (an installed or --gateway-src checkout) is left as it is.
_OUT_ENV = "BENCH_OPCOUNT_OUT"


class OpcodeCounter:
    """Instructions and calls per code object, counted while :meth:`start`-ed."""

    def __init__(self) -> None:
        self.instructions: Counter[Key] = Counter()
        self.calls: Counter[Key] = Counter()

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        if code.co_filename == "<string>":
            # dataclass and namedtuple methods are all compiled from "<string>": name the class.
            key = ("<string>", 0, f"{type(frame.f_locals.get('self')).__qualname__}.{code.co_name}")
        if event == "call":
            self.calls[key] += 1
        elif event == "opcode":
            self.instructions[key] += 1
        return self._trace

    def start(self) -> None:
        self.instructions.clear()
        self.calls.clear()
        sys.settrace(self._trace)

    def stop(self) -> None:
        sys.settrace(None)

    def lines(self) -> list[str]:
        """``instructions<TAB>calls<TAB>file:line:function``, most instructions first."""
        return [
            f"{count}\t{self.calls[key]}\t{key[0]}:{key[1]}:{key[2]}"
            for key, count in self.instructions.most_common()
        ]


def serve(argv: list[str]) -> int:
    """The gateway, counting between SIGUSR1 and SIGUSR2 (which writes the counts out)."""
    # Run as a script, this file's directory leads sys.path: bench/profile.py would shadow the
    # standard library's profile module in the gateway.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]
    counter = OpcodeCounter()
    out = Path(os.environ[_OUT_ENV])

    def begin(signum: int, frame: FrameType | None) -> None:
        counter.start()

    def end(signum: int, frame: FrameType | None) -> None:
        counter.stop()
        out.write_text("\n".join(counter.lines()) + "\n")

    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)
    from gateway.cli import main

    return main(argv)


def summary(text: str, requests: int, top: int = 30) -> list[str]:
    """The counter's output as a per-request report: the total, then the top functions."""
    from bench.profile import short_path  # not at the top: `serve` runs without bench importable

    rows: list[tuple[int, int, str]] = []
    for line in text.splitlines():
        instructions, calls, where = line.split("\t", 2)
        rows.append((int(instructions), int(calls), short_path(where)))
    total = sum(row[0] for row in rows)
    total_calls = sum(row[1] for row in rows)
    report = [
        f"{total / requests:,.0f} bytecode instructions and {total_calls / requests:,.0f} Python "
        f"calls per request ({requests} requests)",
        f"{'instructions':>12} {'calls':>6}  function",
    ]
    for count, calls_of, name in rows[:top]:
        report.append(f"{count / requests:12,.1f} {calls_of / requests:6.2f}  {name}")
    return report


def run(requests: int, stream: bool, gateway_src: Path | None, top: int) -> list[str]:
    """Start everything, count ``requests`` requests, stop everything; the report."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import services, stack
    from bench.procs import Processes
    from bench.workload import Bodies

    run_dir = Path(tempfile.mkdtemp(prefix="tollgate-opcount-"))
    out = run_dir / "opcounts.tsv"
    prefix = f"tollgate-opcount:{os.getpid()}:"
    database = services.BenchDatabase(services.DEFAULT_POSTGRES, f"tollgate_opcount_{os.getpid()}")
    database.recreate()
    os.environ[_OUT_ENV] = str(out)
    try:
        with Processes(run_dir) as procs:
            stub = stack.start_stub(procs, ttft_ms=20, tokens_per_s=200, tokens=16)
            backends = stack.Backends(
                services.DEFAULT_REDIS, prefix, database.url, run_dir / "data", gateway_src
            )
            backends.gateway_entry = (str(Path(__file__).resolve()),)
            gateway = stack.start_gateway(procs, backends, stub.url, stack.POLICIES / "full")
            connection = http.client.HTTPConnection(stack.HOST, gateway.port, timeout=30)
            headers = {"authorization": f"Bearer {gateway.key}", "content-type": "application/json"}
            bodies = Bodies(f"opcount-{os.getpid()}")

            def one() -> None:
                connection.request("POST", stack.CHAT, bodies.distinct(stream=stream), headers)
                answer = connection.getresponse()
                data = answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"the gateway answered {answer.status}: {data[:300]!r}")

            for _ in range(50):  # warm: keys, connections, tokenizer, routing stats
                one()
            time.sleep(1.0)  # what the warm-up left behind (settles, ledger) runs uncounted
            os.kill(gateway.started.pid, signal.SIGUSR1)
            time.sleep(0.5)
            for _ in range(requests):
                one()
            time.sleep(1.5)  # each request's settle and ledger write are part of it
            os.kill(gateway.started.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            text = out.read_text()
    finally:
        database.drop()
        services.redis_keys(services.DEFAULT_REDIS, prefix, delete=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return summary(text, requests, top)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        return serve(args)
    parser = argparse.ArgumentParser(prog="python -m bench.opcount", description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--gateway-src", type=Path, help="another checkout's gateway/ to count")
    parsed = parser.parse_args(args)
    src = parsed.gateway_src.resolve() if parsed.gateway_src else None
    print("\n".join(run(parsed.requests, parsed.stream, src, parsed.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
