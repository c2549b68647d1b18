"""The batched access log: the same JSON lines as the logging module's, written in batches."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest

from gateway.logs import AccessLog


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield read, write
    os.close(read)
    os.close(write)


def drain(fd: int) -> list[dict[str, object]]:
    try:
        data = os.read(fd, 1 << 20)
    except BlockingIOError:
        return []
    return [json.loads(line) for line in data.decode().splitlines()]


async def test_lines_wait_for_the_interval_then_go_out_in_one_write(
    pipe: tuple[int, int],
) -> None:
    read, write = pipe
    log = AccessLog(write, flush_interval_s=0.05)
    log.write({"request_id": "a", "http_status": 200})
    log.write({"request_id": "b", "http_status": 429})
    assert drain(read) == []
    await asyncio.sleep(0.1)
    lines = drain(read)
    assert [line["request_id"] for line in lines] == ["a", "b"]
    first = lines[0]
    assert first["level"] == "info" and first["logger"] == "tollgate.access"
    assert first["msg"] == "request" and first["http_status"] == 200
    assert isinstance(first["ts"], str) and first["ts"].endswith("Z") and len(first["ts"]) == 24


async def test_a_full_buffer_and_shutdown_flush_at_once(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog(write, flush_interval_s=60, max_bytes=300)  # a line here is ~190 bytes
    log.write({"request_id": "r0", "path": "x" * 80})
    assert drain(read) == []
    log.write({"request_id": "r1", "path": "x" * 80})
    assert [line["request_id"] for line in drain(read)] == ["r0", "r1"]
    log.write({"request_id": "last"})
    log.flush()
    assert [line["request_id"] for line in drain(read)] == ["last"]
