"""One HTTP/1.1 client connection: ``asyncio.Protocol`` + ``httptools``, one exchange at a time.

Why not aiohttp: on this path every microsecond is the gateway's own overhead, and aiohttp's
client is general (cookies, redirects, multidicts, tracing). Against the bench stub on the 2-core
dev machine, ``OpenAIUpstream.send`` costs about 47 us p50 on this client and 210 us on aiohttp.
The connection does the wire work only: it writes a request, parses the
response as it arrives (body framed by content-length, chunked, or the end of the connection) and
hands it to one reader. Pooling, deadlines before the request is written and the retry of stale
keep-alive connections live in :mod:`gateway.providers.http1_pool`.

The reader never polls: it awaits a future that is created only when it has to wait, and the
protocol callbacks resolve it, so a response that arrives in one read costs one wake-up. Timeouts
use one lazily re-armed timer per connection rather than one per request or per read: a timer
costs microseconds to arm and cancel on uvloop, and deadlines almost never expire, so the timer
fires about once per timeout period, finds the current deadline later, and moves there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

from gateway.providers.http1_errors import ConnectionClosed, HTTPError, HTTPTimeout, ProtocolError

# Unread stream data above this pauses the socket: a slow client must not make us buffer an
# unbounded answer (TCP flow control then slows the upstream instead).
_HIGH_WATER = 256 * 1024


Hook = Callable[["Connection"], None]


def _ignore(connection: Connection) -> None:
    pass


class Connection(asyncio.Protocol):
    """A keep-alive connection to one origin; ``start`` one request, read it, then ``release``."""

    __slots__ = (
        "_active",
        "_backpressure",
        "_buffered",
        "_chunks",
        "_deadline",
        "_error",
        "_gap_mode",
        "_gap_s",
        "_got_bytes",
        "_interim",
        "_keep_alive",
        "_linger_timer",
        "_loop",
        "_on_close",
        "_on_release",
        "_parser",
        "_paused",
        "_timer",
        "_timer_at",
        "_transport",
        "_until_close",
        "_waiter",
        "closed",
        "complete",
        "head_done",
        "headers",
        "idle",
        "idle_until",
        "keep_alive_s",
        "status",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Hooks are attached by the pool once the connection is its own (see ``attach``).
        self._on_release: Hook = _ignore
        self._on_close: Hook = _ignore
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle = False  # sitting in the pool's idle list
        self.idle_until = 0.0
        self.keep_alive_s: float | None = None  # the server's Keep-Alive: timeout=N, if sent
        self._active = False
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.head_done = False
        self.complete = False
        self._keep_alive = False
        self._error: HTTPError | None = None
        self._got_bytes = False
        self._until_close = False
        self._interim = False
        self._backpressure = False
        self._paused = False
        self._gap_mode = False
        self._gap_s = 0.0
        # The exchange's deadline (loop time): fixed for a whole response, or, in gap mode,
        # moved forward each time the reader starts waiting.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None

    def attach(self, on_release: Hook, on_close: Hook) -> None:
        """Hand the connection to its pool: clean ends go to ``on_release``, closes to ``on_close``.

        Attached only after ``create_connection`` returned, so a connection that failed while
        being opened is never counted twice.
        """
        self._on_release = on_release
        self._on_close = on_close
        if self.closed:
            on_close(self)

    @property
    def usable(self) -> bool:
        """Open, and not known to be closing (a pooled connection the server already closed)."""
        transport = self._transport
        return not self.closed and transport is not None and not transport.is_closing()

    # --- the exchange, from the reader's side -----------------------------------------------

    def start(self, payload: bytes | list[bytes], *, deadline: float | None, gap_s: float) -> None:
        """Write one request. ``deadline`` (loop time) bounds the whole response; otherwise
        each wait for data is bounded by ``gap_s`` (streams: time to first byte and every gap).
        """
        transport = self._transport
        if transport is None or self.closed or transport.is_closing():
            self.close()
            raise ConnectionClosed("the connection was already closed", before_response=True)
        self._active = True
        self.status = 0
        self.headers = {}
        self._chunks = []
        self._buffered = 0
        self.head_done = self.complete = self._keep_alive = False
        self._error = None
        self._got_bytes = self._until_close = self._interim = False
        self._backpressure = self._gap_mode = deadline is None
        self._gap_s = gap_s
        if deadline is not None:
            self._deadline = deadline
            self._arm(deadline)
        if isinstance(payload, bytes):
            transport.write(payload)
        else:
            transport.writelines(payload)

    async def wait_head(self) -> None:
        """Until the status line and headers arrived (interim 1xx answers are skipped)."""
        while not self.head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read_body(self) -> bytes:
        """The whole body, once the response is complete."""
        if self._backpressure:
            self._backpressure = False
            self._resume()
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        chunks = self._chunks
        self._chunks = []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def next_chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call (waiting for some); None at the end.

        Data that arrived before a failure is handed out before the failure is raised, so a
        stream cut half-way still delivers every event it carried.
        """
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self._resume()
                return data
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    def release(self) -> None:
        """The reader is done: the pool reuses the connection if the exchange ended cleanly."""
        if self.complete and self._keep_alive and self._error is None and self.usable:
            self._active = False
            self._chunks = []
            self._on_release(self)
        else:
            self.close()

    def linger(self, grace_s: float) -> None:
        """Release once the response completes, if within ``grace_s``; else close.

        For a reader that stops at the last event it needs (``[DONE]``) before the message's
        final bytes (the last chunk) arrived: generation is over, so waiting a moment keeps the
        connection instead of paying a new handshake.
        """
        if self.complete or self.closed:
            self.release()
            return
        self._chunks = []
        self._buffered = 0
        self._resume()
        self._linger_timer = self._loop.call_later(grace_s, self.close)

    def close(self) -> None:
        """Close the socket now (an upstream seeing it stops generating); frees the pool slot."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        midway = self._active and not self.complete
        if midway and self._error is None:
            self._error = ConnectionClosed(
                "the connection was closed", before_response=not self._got_bytes
            )
        transport = self._transport
        if transport is not None:
            # Mid-exchange, abort: nothing queued matters any more, and the socket must go now
            # (over TLS, close() only sends close_notify and keeps the socket until the peer
            # answers, for up to 30 s).
            if midway:
                transport.abort()
            else:
                transport.close()
        self._wake()
        self._on_close(self)

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._active or self.complete:
            # Bytes nobody asked for (after a complete response, or on an idle connection):
            # the stream is out of step with our requests, so it cannot be trusted again.
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ProtocolError(f"malformed response: {exc}"))
            return
        if self._linger_timer is not None:
            self._end_linger()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._active and not self.complete and self._error is None:
            if exc is None and self._until_close and self.head_done:
                # A body without content-length or chunking ends where the connection does.
                self.complete = True
                self._keep_alive = False
                self._cancel_timers()
            else:
                if self.head_done:
                    why = "the upstream closed the connection in the middle of the response"
                else:
                    why = "the upstream closed the connection without answering"
                if exc is not None:
                    why = f"{why} ({type(exc).__name__}: {exc})"
                self._error = ConnectionClosed(why, before_response=not self._got_bytes)
            self._wake()
        if not self.closed:
            self.closed = True
            self._cancel_timers()
            self._on_close(self)

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second response to one request: raising makes feed_data fail, which closes.
            raise ProtocolError("the upstream sent more than one response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            self._interim = True
            self.headers = {}
            return
        self.status = status
        self.head_done = True
        headers = self.headers
        self._until_close = (
            b"content-length" not in headers
            and b"transfer-encoding" not in headers
            and status not in (204, 304)
        )
        hint = headers.get(b"keep-alive")
        if hint is not None:
            self.keep_alive_s = _keep_alive_timeout(hint)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._linger_timer is not None:
            return  # nobody reads any more: only the end of the message matters
        self._chunks.append(body)
        if self._backpressure:
            self._buffered += len(body)
            if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    # --- internals ----------------------------------------------------------------------------

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        if self._gap_mode:  # each wait for data has its own bound (the stream gap)
            self._deadline = self._loop.time() + self._gap_s
            self._arm(self._deadline)
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return  # it fires first, finds the later deadline and moves there
            timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._active or self.complete or self.closed:
            return  # the exchange it was armed for is over
        if self._gap_mode and self._waiter is None:
            return  # nobody waits (the reader is busy): its next wait arms the timer again
        if self._loop.time() < self._deadline:
            self._arm(self._deadline)
            return
        if not self.head_done:
            why = f"no response within {self._gap_s:g}s"
        elif self._gap_mode:
            why = f"the stream sent nothing for {self._gap_s:g}s"
        else:
            why = f"the response did not complete within {self._gap_s:g}s"
        self._fail(HTTPTimeout(why))

    def _fail(self, error: HTTPError) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self.close()

    def _end_linger(self) -> None:
        # The message a lingering reader left behind has ended: the connection is reusable.
        if self.complete and self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
            self.release()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None


def _keep_alive_timeout(value: bytes) -> float | None:
    """``timeout=N`` of a Keep-Alive header: the server closes idle connections after N s."""
    for part in value.split(b","):
        name, _, number = part.strip().partition(b"=")
        if name.strip().lower() == b"timeout":
            try:
                return max(0.0, float(number))
            except ValueError:
                return None
    return None
