"""Giving the C heap's free pages back: the real malloc_trim in a fresh process, the trimmer's
schedule, and the served app running it (or not) as configured."""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from gateway.app import create_app
from gateway.heap_trim import LOADING_MAPS_FROM, SERVING_MAPS_FROM, HeapTrimmer
from gateway.settings import Settings
from tests.support.uvicorn_server import uvicorn_server

DEMO = Path(__file__).resolve().parents[2] / "policies" / "demo.yaml"
GLIBC = platform.libc_ver()[0] == "glibc"

# What the gateway does with big prompts, in a fresh process: 200 buffers of a 100k-token
# prompt's size, each followed by a small block (600 bytes: glibc's, not Python's small-object
# allocator) that stays alive and pins the heap above it. After the first big block is freed,
# glibc serves the next ones from its heap instead of fresh mappings, so freeing them leaves the
# pages in the process until they are trimmed.
FRAGMENT = """
import json, sys
from gateway.heap_trim import release_free_memory

def rss_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

kept, text = [], ""
for i in range(200):
    kept.append(bytearray(434_000))
    text = kept[-1].decode("latin-1")  # the parsed body: a block freed on the next turn
    kept.append(bytearray(600))  # a small block that outlives the big ones
del text, kept[::2]
before = rss_kb()
released = release_free_memory()
print(json.dumps({"before": before, "after": rss_kb(), "released": released}))
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_gives_the_freed_heap_pages_back() -> None:
    run = subprocess.run(
        [sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(run.stdout)
    assert got["released"] is True
    # About 87 MB were freed into the heap; at least half of it must leave.
    assert got["before"] - got["after"] > 40_000, got


# Where glibc puts a 2 MB block allocated after a first one was freed: with its default, freeing
# a first mapped 2 MB block raises the size it maps from to 2 MB, so the second comes from the
# heap; mapping from 128 KB on keeps it out of the heap; from 32 MB on, both come from the heap.
MAPPING = """
import ctypes, json
from gateway.heap_trim import map_blocks_from

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = Mallinfo2
size = {size}
if size:
    assert map_blocks_from(size)
first = libc.malloc(2 * 1024 * 1024)
first_mapped = libc.mallinfo2().hblkhd
libc.free(first)
block = libc.malloc(2 * 1024 * 1024)
print(json.dumps({{"first": first_mapped, "second": libc.mallinfo2().hblkhd}}))
libc.free(block)
"""
MB2 = 2 * 1024 * 1024


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize(
    ("size", "first_mapped", "second_mapped"),
    [(0, True, False), (LOADING_MAPS_FROM, True, True), (SERVING_MAPS_FROM, False, False)],
    ids=["glibc-default", "loading", "serving"],
)
def test_where_big_blocks_go(size: int, first_mapped: bool, second_mapped: bool) -> None:
    run = subprocess.run(
        [sys.executable, "-c", MAPPING.format(size=size)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    got = json.loads(run.stdout)  # bytes in blocks glibc mapped on their own, after each malloc
    assert (got["first"] >= MB2) is first_mapped, got
    assert (got["second"] >= MB2) is second_mapped, got


async def until(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.005)


async def test_it_trims_every_interval_in_a_worker_thread_until_closed() -> None:
    threads: list[int] = []
    trimmer = HeapTrimmer(0.01, trim=lambda: threads.append(threading.get_ident()))
    trimmer.start()
    await until(lambda: len(threads) >= 3)
    await trimmer.aclose()
    done = len(threads)
    assert threading.get_ident() not in threads
    await asyncio.sleep(0.05)
    assert len(threads) == done


async def test_a_trim_that_fails_does_not_stop_the_next_ones() -> None:
    def fail() -> None:
        raise OSError("no")

    trimmer = HeapTrimmer(0.01, trim=fail)
    trimmer.start()
    await until(lambda: trimmer.runs >= 3)  # it would stop at the first failure otherwise
    await trimmer.aclose()


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        HeapTrimmer(0)
    with pytest.raises(ValueError, match="heap_trim_s"):
        Settings(heap_trim_s=-1)


def served_trim_tasks(tmp_path: Path, heap_trim_s: float | None = None) -> tuple[int, int]:
    """How many heap-trim tasks the served app's loop runs while serving, and after it stopped."""

    def trimming() -> int:
        return sum(task.get_name() == "heap-trim" for task in asyncio.all_tasks())

    async def main() -> tuple[int, int]:
        settings = Settings(policy=DEMO, data_dir=tmp_path, access_log=False)
        if heap_trim_s is not None:
            settings = settings.model_copy(update={"heap_trim_s": heap_trim_s})
        async with uvicorn_server(create_app(settings), lifespan="on"):
            serving = trimming()
        return serving, trimming()

    return uvloop.run(main())


def test_the_served_app_trims_by_default_and_stops_with_it(tmp_path: Path) -> None:
    assert served_trim_tasks(tmp_path) == (1, 0)


def test_zero_turns_it_off(tmp_path: Path) -> None:
    assert served_trim_tasks(tmp_path, heap_trim_s=0) == (0, 0)
