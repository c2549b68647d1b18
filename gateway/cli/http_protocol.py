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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.completions import DISCONNECT_EXTENSION
from gateway.api.context import ARRIVED_EXTENSION
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
