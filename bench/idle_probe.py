"""What this machine does to a process that has been idle: the context for every latency figure.

Two probes, each run back to back and then with sleeps between the runs:

* a fixed piece of Python work (JSON, dict and list walking, a regex: the kind of code a
  request runs), timed alone. On a VM whose vCPU halts when idle, and whose host runs something
  else on that core meanwhile, the same work is slower after a sleep: caches are cold.
* a loopback TCP round trip to a second process, which also pays for waking that process.
* first calls: three small, unrelated calls (a JSON parse, a SHA-256, a regex), each made once.
  The work above repeats the same code, so only its first pass runs cold; a request runs a long
  chain of different code, each piece once, and pays the cold cost at every link. Measured here
  (2026-12-03): 2-3 µs back to back, 20 µs after 20 ms asleep, 120-130 µs after 100 ms: time
  enough for the host to run other work on the core and evict this process's caches and TLB
  entries. Not the clock speed: spinning for 1 ms first cut the first JSON parse only from 43 µs
  to 29.

A request through the gateway runs more of both than the direct-to-stub baseline does (its own
~0.5 ms of Python, plus hops to Redis and the upstream), so at one request in flight with idle gaps
between requests (a paced stream's first token, a low open-loop rate) the gateway's added time is
inflated by the machine, not only by the gateway. ``python -m bench.idle_probe`` prints the table.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

Json = dict[str, Any]
GAPS_MS = (0.0, 1.0, 5.0, 20.0, 100.0)
# Gaps this long get fewer rounds, so the probe stays a few seconds long.
_LONG_GAP_MS = 50.0

_MESSAGES = [{"role": "user", "content": f"hello number {i}", "n": i} for i in range(40)]
_GRID = [list(range(200)) for _ in range(200)]
_PATTERN = re.compile(rb"[^\x21-\x7e]")


def python_work() -> int:
    """About 0.5 ms of request-like Python on a quiet 2-core VM."""
    total = 0
    for _ in range(6):
        decoded = json.loads(json.dumps(_MESSAGES))
        total += len(decoded)
        for row in _GRID[::7]:
            total += sum(row[::13])
        total += sum(1 for _ in range(300) if _PATTERN.search(b"abc"))
    return total


_SMALL_JSON = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})


def first_calls() -> int:
    """Three small calls into unrelated code, each once: a few µs when the caches are warm."""
    total = len(json.loads(_SMALL_JSON))
    total += hashlib.sha256(b"tollgate").digest()[0]
    total += 1 if _PATTERN.search(b"a b") else 0
    return total


def _timed(run: Callable[[], object], gap_s: float, rounds: int) -> list[float]:
    spent = []
    for _ in range(rounds):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter()
        run()
        spent.append((time.perf_counter() - started) * 1e6)
    return sorted(spent)


def _quantiles(us: list[float]) -> Json:
    n = len(us)
    return {f"p{q}": round(us[min(n - 1, n * q // 100)]) for q in (50, 90, 99)}


# The echoing peer: a separate interpreter (not a fork, which would carry this process's signal
# handlers and clean-up into the child), printing its port, echoing until the connection closes.
_ECHO = """
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := conn.recv(64):
    conn.sendall(data)
"""


def _echo_peer() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A process echoing bytes on a loopback connection, and our end of that connection."""
    peer = subprocess.Popen(
        [sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert peer.stdout is not None
        port = int(peer.stdout.readline())
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
    except BaseException:
        peer.kill()
        peer.wait()
        raise
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, peer


def probe(rounds: int = 200) -> Json:
    """Microseconds (p50/p90/p99) of the work and of a round trip, after each gap."""
    client, peer = _echo_peer()

    def round_trip() -> None:
        client.sendall(b"x")
        client.recv(64)

    try:
        rows: list[Json] = []
        for gap_ms in GAPS_MS:
            n = rounds if gap_ms < _LONG_GAP_MS else max(5, rounds // 5)
            rows.append(
                {
                    "gap_ms": gap_ms,
                    "rounds": n,
                    "python_work_us": _quantiles(_timed(python_work, gap_ms / 1000, n)),
                    "loopback_rtt_us": _quantiles(_timed(round_trip, gap_ms / 1000, n)),
                    "first_calls_us": _quantiles(_timed(first_calls, gap_ms / 1000, n)),
                }
            )
    finally:
        client.close()  # the peer's recv returns b"" and it exits
        try:
            peer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()
    first, last = rows[0]["python_work_us"]["p50"], rows[-1]["python_work_us"]["p50"]
    return {
        "rounds": rounds,
        "rows": rows,
        "work_slowdown_after_idle": round(last / first, 2) if first else None,
    }


def main() -> None:
    result = probe()
    print(
        f"{'gap':>8} {'work p50/p90/p99 (us)':>24} {'loopback RTT p50/p90/p99 (us)':>32}"
        f" {'first calls p50/p90/p99 (us)':>30}"
    )
    for row in result["rows"]:
        work, rtt, first = row["python_work_us"], row["loopback_rtt_us"], row["first_calls_us"]
        print(
            f"{row['gap_ms']:>6g}ms {work['p50']:>8}/{work['p90']}/{work['p99']:<10}"
            f" {rtt['p50']:>12}/{rtt['p90']}/{rtt['p99']:<12}"
            f" {first['p50']:>10}/{first['p90']}/{first['p99']}"
        )
    print(f"the same work after {GAPS_MS[-1]:g} ms idle: x{result['work_slowdown_after_idle']}")


if __name__ == "__main__":
    main()
