"""The gateway's own account of a measurement: its access log, read back afterwards.

The client sees what the gateway adds end to end: the gateway's code, plus the kernel's hops
and wake-ups on the way in and out. Each access-log line carries ``overhead_ms``, the part of
the time to first byte the gateway spent itself (not waiting on upstreams). Read back for the
requests of one measurement, it separates the two: the same code measured warm (requests back
to back) and after an idle spell (a paced stream, whose request path had not run for the
100 ms the stream before it took) shows what the machine's idle penalty does to the gateway's
own time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from bench.stats import rounded, summarize

# The access log is written in batches, every 0.1 s (gateway.logs.AccessLog).
_FLUSH_S = 0.3


class AccessLogReader:
    """Reads the access-log lines a gateway appended to ``path`` (its stderr) since a mark."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = self._size()

    def _size(self) -> int:
        try:
            return self._path.stat().st_size
        except FileNotFoundError:
            return 0

    def mark(self) -> None:
        """Start from here: lines written before now are not read."""
        self._offset = self._size()

    async def overhead_ms(self) -> dict[str, Any]:
        """Summary (n, p50, p90, ...) of ``overhead_ms`` over the successful requests logged
        since the mark, which then moves past them. ``n`` is 0 for a gateway that does not log
        it (older code measured with ``--gateway-src``)."""
        await asyncio.sleep(_FLUSH_S)
        with self._path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        # Only whole lines: a line still being written is read next time.
        whole = data[: data.rfind(b"\n") + 1]
        self._offset += len(whole)
        return rounded(summarize(overheads(whole)))


def overheads(data: bytes) -> list[float]:
    """``overhead_ms`` of each access-log line of a 200 answer in ``data`` (JSON lines)."""
    found = []
    for line in data.splitlines():
        if b'"tollgate.access"' not in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(entry, dict):
            continue
        value = entry.get("overhead_ms")
        if entry.get("http_status") == 200 and isinstance(value, int | float):
            found.append(float(value))
    return found
