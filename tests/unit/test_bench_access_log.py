"""The harness reads the gateway's own time back from its access log (bench/access_log.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from bench.access_log import AccessLogReader, overheads


def _line(status: int, overhead: float | None, logger: str = "tollgate.access") -> bytes:
    entry = {"logger": logger, "msg": "request", "http_status": status, "overhead_ms": overhead}
    return orjson.dumps(entry) + b"\n"


def test_only_successful_access_lines_with_an_overhead_count() -> None:
    data = b"".join(
        [
            _line(200, 0.5),
            _line(429, 0.2),  # refused: not a measured answer
            _line(200, None),  # no upstream reached (or an older gateway)
            _line(200, 0.7, logger="uvicorn.error"),
            b"not json at all\n",
            b'"tollgate.access" but not an object\n',
            _line(200, 1),
        ]
    )
    assert overheads(data) == [0.5, 1.0]


def test_the_reader_sees_only_what_was_written_since_its_mark(tmp_path: Path) -> None:
    log = tmp_path / "gateway.err"
    log.write_bytes(_line(200, 9.0))  # before the reader: never read

    async def scenario() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
        reader = AccessLogReader(log)
        with log.open("ab") as out:
            out.write(_line(200, 1.0) + _line(200, 3.0) + _line(200, 2.0))
            # A line half written when the reader looks is left for the next read.
            out.write(_line(200, 4.0)[:20])
        first = await reader.overhead_ms()
        with log.open("ab") as out:
            out.write(_line(200, 4.0)[20:])
        second = await reader.overhead_ms()
        with log.open("ab") as out:
            out.write(_line(200, 8.0))
        reader.mark()  # skipped: written before the mark
        third = await reader.overhead_ms()
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first["n"] == 3 and first["p50"] == 2.0 and first["max"] == 3.0
    assert second["n"] == 1 and second["p50"] == 4.0
    assert third["n"] == 0
