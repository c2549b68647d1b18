"""Structured logging: one JSON object per line, on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """Renders a record as JSON. Exceptions are reduced to their type and message: a stack
    trace may carry request data or secrets, so none is ever written."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            data["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return orjson.dumps(data, default=str).decode()


def configure(level: str = "info") -> None:
    """Send every log line to stderr as JSON (stdout is kept for data and the startup banner)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's own access log would duplicate ours, without the fields that matter.
    logging.getLogger("uvicorn.access").disabled = True


class AccessLog:
    """The access log: one JSON line per request, shaped like every other log line (``ts``,
    ``level``, ``logger``, ``msg``, then the fields), written to ``fd`` in batches.

    Through the logging module a line costs a LogRecord, a formatter pass and a write(2) of its
    own, on the event loop that serves requests. Here it costs one ``orjson.dumps`` and a list
    append; one write per ``flush_interval_s`` (or per ``max_bytes``) carries all of them. A
    crash loses at most the last interval's lines: the ledger, not this log, is the durable
    record of a request.
    """

    def __init__(
        self, fd: int = 2, *, flush_interval_s: float = 0.1, max_bytes: int = 64 * 1024
    ) -> None:
        self._fd = fd
        self._interval = flush_interval_s
        self._max_bytes = max_bytes
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def write(self, fields: dict[str, Any]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = orjson.dumps(
            {
                "ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z",
                "level": "info",
                "logger": "tollgate.access",
                "msg": "request",
                **fields,
            },
            default=str,
        )
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= self._max_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Write out what is buffered (also called at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = memoryview(b"\n".join(self._lines) + b"\n")
        self._lines.clear()
        self._size = 0
        with contextlib.suppress(OSError):  # a closed stderr must not fail requests
            while data:
                data = data[os.write(self._fd, data) :]
