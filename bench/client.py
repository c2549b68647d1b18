"""A minimal keep-alive HTTP/1.1 client that timestamps what it receives.

``asyncio.Protocol`` + ``httptools`` rather than aiohttp or httpx: the harness shares two cores
with the gateway, so the client must cost little and, above all, the same for the direct and the
gateway request, so that their difference is the gateway's. Each :class:`Exchange` records when
the request was written, when the response head and each SSE ``data:`` event arrived, and when
the response was complete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

_DATA = b"data:"


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go and the header block they carry."""

    name: str
    host: str
    port: int
    path: str
    headers: bytes  # extra header lines, each ending in \r\n

    def request(self, body: bytes) -> bytes:
        """The complete request bytes for a JSON ``body``."""
        return (
            b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
            b"%scontent-length: %d\r\n\r\n%s"
            % (self.path.encode(), self.host.encode(), self.port, self.headers, len(body), body)
        )


def bearer(key: str) -> bytes:
    """An ``authorization`` header line."""
    return b"authorization: Bearer %s\r\n" % key.encode()


@dataclass(slots=True)
class Exchange:
    """One request and what came back. Times are ``time.perf_counter()`` seconds."""

    index: int = 0
    scheduled: float = 0.0  # when an open-loop schedule wanted it sent
    sent: float = 0.0
    head: float = 0.0  # response head parsed
    done: float = 0.0
    status: int = 0  # -1: the connection broke
    events: list[float] | None = None  # arrival time per SSE data: event (streams only)
    headers: dict[str, str] | None = None  # x-tollgate-* response headers, when captured
    body: bytearray | None = None  # when kept
    error: str = ""

    @property
    def latency(self) -> float:
        """Seconds from send to the complete response."""
        return self.done - self.sent


Done = Callable[["Connection", Exchange], None]


@dataclass(slots=True)
class Options:
    """What a connection keeps from each response (everything off = cheapest)."""

    events: bool = False
    headers: bool = False
    body: bool = False


class Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange in flight (no pipelining)."""

    def __init__(self, options: Options, on_done: Done | None = None) -> None:
        self.options = options
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._current: Exchange | None = None
        self._waiter: asyncio.Future[Exchange] | None = None

    # -- sending -----------------------------------------------------------------------------

    def send(self, payload: bytes, exchange: Exchange) -> None:
        """Write one request; ``on_done`` (or the waiter of :meth:`call`) gets the exchange."""
        if self._current is not None:
            raise RuntimeError("a request is already in flight on this connection")
        if self.transport is None or self.transport.is_closing():
            exchange.status, exchange.error = -1, "connection closed"
            exchange.done = time.perf_counter()
            self._finish(exchange)
            return
        if self.options.events:
            exchange.events = []
        if self.options.headers:
            exchange.headers = {}
        if self.options.body:
            exchange.body = bytearray()
        self._current = exchange
        exchange.sent = time.perf_counter()
        self.transport.write(payload)

    async def call(self, payload: bytes, exchange: Exchange | None = None) -> Exchange:
        """Send one request and wait for its complete response."""
        waiter: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.send(payload, exchange or Exchange())
        return await waiter

    def close(self) -> None:
        """Close the socket (an exchange in flight fails)."""
        if self.transport is not None:
            self.transport.close()

    @property
    def busy(self) -> bool:
        """Whether an exchange is in flight on this connection."""
        return self._current is not None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self._current
        if exchange is not None and exchange.events is not None and _DATA in data:
            now = time.perf_counter()
            exchange.events.extend([now] * data.count(_DATA))
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad response: {exc}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail("connection lost")
        if not self.closed.done():
            self.closed.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._current
        if (
            exchange is not None
            and exchange.headers is not None
            and name[:10].lower() == (b"x-tollgate")
        ):
            exchange.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        exchange = self._current
        if exchange is not None:
            exchange.head = time.perf_counter()
            exchange.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        exchange = self._current
        if exchange is not None and exchange.body is not None:
            exchange.body += body

    def on_message_complete(self) -> None:
        exchange = self._current
        if exchange is None:
            return
        exchange.done = time.perf_counter()
        self._current = None
        self._finish(exchange)

    # -- internals ---------------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        exchange = self._current
        if exchange is None:
            return
        self._current = None
        exchange.status, exchange.error = -1, why
        exchange.done = time.perf_counter()
        self._finish(exchange)

    def _finish(self, exchange: Exchange) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(exchange)
        elif self.on_done is not None:
            self.on_done(self, exchange)


async def connect(
    target: Target, options: Options | None = None, on_done: Done | None = None
) -> Connection:
    """Open a connection to ``target`` (TCP_NODELAY is asyncio's default)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: Connection(options or Options(), on_done), target.host, target.port
    )
    return protocol
