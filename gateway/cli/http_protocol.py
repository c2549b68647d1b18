"""uvicorn's httptools protocol with two changes: coalesced writes, and a disconnect callback.

**Coalesced writes.**

uvicorn writes a response's head and its body with two ``transport.write`` calls, and every SSE
event of a stream with one each. On uvloop each call is a ``write(2)`` at once when the socket
is writable, so a JSON answer costs two system calls and two TCP segments, and the client wakes
up for each. On loopback, and on VMs whose idle vCPUs halt, a write that wakes the peer is
among the dearest things a request does: py-spy put uvicorn's two writes at about 8% of the
gateway's busy time (2026-12-03).

:class:`CoalescingTransport` gathers what is written during one event-loop iteration and hands
it to the real transport once, at the end of that iteration (``call_soon``): the head and body
of a JSON answer leave in one write, and so do the events of a stream that arrived in one read
from the upstream. Nothing waits longer than that iteration, so time to first token does not
move; ``close`` sends what is gathered first, ``abort`` drops it. A response's last bytes leave
as soon as it is complete, not at the end of the iteration: what the handler does after its last
``send`` (the access log) and the tasks it started before (the budget's settle, whose first step
is queued ahead of the end-of-iteration write) would otherwise hold the answer back. At one
request in flight, from the upstream's answer arriving to the client's being written took
0.200-0.210 ms at p50 and 0.32 at p90 before, 0.172 and 0.24 after (bench latency section, the
gateway's socket calls timestamped in-process, 2026-12-03).

**A disconnect callback** (the ASGI extension ``tollgate.on_disconnect`` in the request's scope).
The billed endpoints stop an upstream call whose client has left. Plain ASGI can only tell
them by a second task awaiting ``receive()`` for ``http.disconnect`` beside every request; with
this extension they register a callback the protocol calls from ``connection_lost`` instead: no
task per request. Its value is a function ``watch(callback) -> stop``; ``callback`` runs once
if the connection is lost before ``stop()`` is called (soon after registration, if it already
was). Servers without it (tests' in-process ASGI client) keep the task.

**The request's arrival** (``tollgate.arrived``): the time its first byte was parsed, from which
:class:`gateway.api.context.RequestContext` times the request. Without it the clock started when
the app was reached, after uvicorn's parsing and the wait for the request's task: 35-50 µs back
to back and 100-200 µs on a process that had been idle for 100 ms (2026-12-06, in-process
timestamps), time that no timing of the gateway's own counted.

**Responses written directly** (``tollgate.respond``, a :class:`DirectResponse`; see
:data:`gateway.api.context.RESPOND_EXTENSION`). Through ASGI, a JSON answer is two ``send``
messages and a stream one per event, and uvicorn's ``send`` walks a head's headers one by one (two
regular expressions, a lower-casing and a comparison chain for each of about 15 headers): 838 of
the 14,594 bytecode instructions a JSON request ran (``bench.opcount``, 2026-12-06), and about
110 per event of a stream, plus the messages and header tuples the layers above built for it.
:class:`DirectResponse` takes the header lines already encoded (the caller vouches for them:
:func:`gateway.api.context.header_lines` checks the values) and writes a whole response, or a
chunked stream's head, chunks and end, with the cycle's state left as ``send`` would leave it, so
the two can be mixed. Each call declines (returns False, nothing done) where ``send``'s other
branches matter: the response already started (or not started, for a chunk), the client not
reading (flow control: ``send`` waits for the buffer to drain), uvicorn's own access log on, a
HEAD request, or a status that carries no body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from gateway.api.completions import DISCONNECT_EXTENSION
from gateway.api.context import ARRIVED_EXTENSION, RESPOND_EXTENSION
from gateway.busy_poll import STATE_KEY as BUSY_POLL
from gateway.busy_poll import BusyPoll


class CoalescingTransport:
    """Wraps a transport: ``write`` gathers, one ``write`` per loop iteration goes out.

    Everything but writing and closing is the wrapped transport's own (flow control, reading,
    extra info): the transport still reports a full write buffer to the protocol itself, with
    at most one iteration's data behind it.
    """

    __slots__ = ("_handle", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data) if not isinstance(data, bytes) else data)
        if self._handle is None:
            self._handle = self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for data in chunks:
            self.write(data)

    def flush(self) -> None:
        """Hand what was gathered to the transport now (a no-op when nothing is)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        # A transport that is closing lost its peer (close() flushes before closing): what
        # was written after that has nowhere to go, as with the transport alone.
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        self._pending.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        # is_closing, pause_reading, resume_reading, get_extra_info, set_protocol, ...
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's protocol on a :class:`CoalescingTransport`, offering ``tollgate.on_disconnect``
    to every request; passed as uvicorn's ``http``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lost = False
        # The app's lifespan state holds the process's poller (absent when it is off).
        self._poller: BusyPoll | None = self.app_state.get(BUSY_POLL)
        self._watchers: set[Callable[[], None]] = set()
        self._coalescing = CoalescingTransport(transport, self.loop)
        wrapped: Any = self._coalescing
        super().connection_made(wrapped)

    def data_received(self, data: bytes) -> None:
        if self._poller is not None:
            self._poller.arm()
        super().data_received(data)

    def on_response_complete(self) -> None:
        # The whole response is written: send it now (see the module's docstring).
        self._coalescing.flush()
        if self._poller is not None:
            self._poller.arm()  # the client's next request often follows at once
        super().on_response_complete()

    def on_message_begin(self) -> None:
        arrived = time.perf_counter()  # the request's first byte is being parsed
        super().on_message_begin()
        extensions: dict[str, Any] = {DISCONNECT_EXTENSION: self._watch, ARRIVED_EXTENSION: arrived}
        self.scope["extensions"] = extensions

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not an upgrade: a cycle of its own
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[RESPOND_EXTENSION] = DirectResponse(cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        watchers = list(self._watchers)
        self._watchers.clear()
        for callback in watchers:
            callback()

    def _watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        if self._lost:
            return self.loop.call_soon(callback).cancel
        self._watchers.add(callback)
        return lambda: self._watchers.discard(callback)


class DirectResponse:
    """``tollgate.respond`` for one request's cycle (see the module docstring). Every method
    returns True when done (or when the client is gone, where ``send`` drops the data too) and
    False when the caller must use ``send`` instead."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    def whole(self, status: int, head: bytes, body: bytes) -> bool:
        """Status line, ``head``, ``content-length`` and ``body``: the whole response."""
        cycle = self._cycle
        if cycle.disconnected:
            return True
        if not _may_start(cycle, status):
            return False
        parts = _head(cycle, status, head)
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        parts.append(body)
        cycle.transport.write(b"".join(parts))
        _complete(cycle)
        return True

    def start(self, status: int, head: bytes) -> bool:
        """Status line and ``head`` of a chunked response (a stream)."""
        cycle = self._cycle
        if cycle.disconnected:
            return True
        if not _may_start(cycle, status):
            return False
        cycle.chunked_encoding = True  # what send assumes for a head with no content-length
        parts = _head(cycle, status, head)
        parts.append(b"transfer-encoding: chunked\r\n\r\n")
        cycle.transport.write(b"".join(parts))
        return True

    def chunk(self, data: bytes) -> bool:
        """One chunk of a response begun by :meth:`start` (or by ``send`` without a length)."""
        cycle = self._cycle
        if cycle.disconnected:
            return True
        if cycle.flow.write_paused or not cycle.chunked_encoding or cycle.response_complete:
            return False
        if data:
            cycle.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True

    def end(self) -> bool:
        """The last chunk: the response is complete."""
        cycle = self._cycle
        if cycle.disconnected:
            return True
        if not cycle.chunked_encoding or cycle.response_complete:
            return False
        cycle.transport.write(b"0\r\n\r\n")
        _complete(cycle)
        return True


def _may_start(cycle: RequestResponseCycle, status: int) -> bool:
    """Whether a head may be written directly now; if so, the cycle counts it as started."""
    if (
        cycle.response_started
        or cycle.flow.write_paused
        or cycle.access_log
        or status < 200
        or status in (204, 304)
        or cycle.scope["method"] == "HEAD"
    ):
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    return True


def _head(cycle: RequestResponseCycle, status: int, head: bytes) -> list[bytes]:
    """The status line, the server's default headers (date), ``head``, and connection: close
    when the connection will not be kept (the blank line is the caller's)."""
    parts = [STATUS_LINE[status]]
    parts += [b"%s: %s\r\n" % pair for pair in cycle.default_headers]
    parts.append(head)
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    return parts


def _complete(cycle: RequestResponseCycle) -> None:
    """As ``send`` ends a response: wake ``receive``, close or start the next request."""
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
