"""The instruction counter behind ``python -m bench.opcount``: counts while started, names the
functions it saw, and turns its output into a per-request report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.opcount import OpcodeCounter, summary


def loop(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


@dataclass
class Point:
    x: int
    y: int


def counted(work: Callable[[], object]) -> OpcodeCounter:
    counter = OpcodeCounter()
    counter.start()
    try:
        work()
    finally:
        counter.stop()
    return counter


def by_function(counter: OpcodeCounter) -> dict[str, tuple[int, int]]:
    return {key[2]: (count, counter.calls[key]) for key, count in counter.instructions.items()}


def test_it_counts_instructions_and_calls_per_function_while_started() -> None:
    ten = by_function(counted(lambda: loop(10)))["loop"]
    hundred = by_function(counted(lambda: loop(100)))["loop"]
    assert ten[1] == hundred[1] == 1  # one call each
    # Each iteration runs the same few instructions: the count grows linearly with n.
    per_iteration = (hundred[0] - ten[0]) / 90
    assert per_iteration == int(per_iteration) and per_iteration >= 3
    assert by_function(counted(lambda: loop(10)))["loop"] == ten  # the same every time


def test_nothing_is_counted_once_stopped() -> None:
    counter = counted(lambda: loop(5))
    before = dict(counter.instructions)
    loop(1000)
    assert counter.instructions == before


def test_generated_methods_are_named_after_their_class() -> None:
    found = by_function(counted(lambda: Point(1, 2)))
    assert "Point.__init__" in found and found["Point.__init__"][1] == 1


def test_the_report_is_per_request_and_shortens_paths() -> None:
    text = (
        "3000\t200\t/w/.venv/lib/python3.11/site-packages/uvicorn/protocols/http/httptools_impl.py:461:send\n"
        "1000\t100\t/opt/py/lib/python3.11/asyncio/events.py:78:_run\n"
    )
    report = summary(text, requests=100)
    assert report[0] == "40 bytecode instructions and 3 Python calls per request (100 requests)"
    send = "uvicorn/protocols/http/httptools_impl.py:461:send"
    assert report[2].split() == ["30.0", "2.00", send]
    assert report[3].endswith("  asyncio/events.py:78:_run")
    assert len(summary(text, requests=100, top=1)) == 3
