"""Keep-alive HTTP/1.1 connections to one origin, and the request head they send.

:class:`ConnectionPool` keeps at most ``max_connections`` connections (open or opening) to one
``scheme://host:port``; a request that finds them all busy waits, first come first served, for
one to come back. A connection returns only when its response was read to the end and the server
did not ask to close it; anything else (an error, a stream closed early, a cancelled request)
closes the socket, which frees its slot at once. Idle connections expire after ``keepalive_s``
(or a little before the server's own ``Keep-Alive: timeout``).

A keep-alive connection the server closed while it sat idle fails the next request on it before
any byte of the response: that request goes again, once, on a new connection. This is the usual
client rule (urllib3 and httpx have it too) for a POST: a reused connection that ends before any
byte of an answer was almost always closed by the server's idle timeout as the request crossed
it, so the request was never read. A fresh connection is never retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.providers.http1_connection import Connection
from gateway.providers.http1_errors import ConnectError, ConnectionClosed, HTTPTimeout
from gateway.providers.http1_response import Response

KEEPALIVE_S = 30.0
# A body above this is written as a second buffer rather than copied behind the header block.
_JOIN_LIMIT = 64 * 1024
# Framing is ours: a configured header must not contradict the body we actually send.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_FORBIDDEN = frozenset("\r\n\0")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a base URL's requests go: ``scheme://host:port``, plus the URL's path prefix."""

    scheme: str
    host: str
    port: int
    path: str  # without a trailing slash: "/v1", or "" for none
    userinfo: tuple[str, str] | None = None

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL with a host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        userinfo = None
        if parts.username is not None:
            userinfo = (unquote(parts.username), unquote(parts.password or ""))
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), userinfo)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """The Host header: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


def request_head(origin: Origin, method: str, path: str, headers: Mapping[str, str]) -> bytes:
    """The request line and the static header lines for ``path``, encoded once and reused.

    Header names are lower-cased (a later one replaces an earlier one); ``host`` may be
    overridden; framing headers are dropped (the pool writes ``content-length`` itself). Raises
    ValueError for a header that could split the request (CR, LF or NUL) or a bad path.
    """
    if not path.startswith("/") or any(c in path for c in " \t\r\n\0"):
        raise ValueError(f"{path!r} is not a request path")
    lines = {"host": origin.authority}
    if origin.userinfo is not None:
        token = base64.b64encode(":".join(origin.userinfo).encode()).decode()
        lines["authorization"] = f"Basic {token}"
    for name, value in headers.items():
        key = name.strip().lower()
        if not key or ":" in key or " " in key or _FORBIDDEN.intersection(key + value):
            raise ValueError(f"header {name!r} cannot be sent (bad name or line break in value)")
        if key not in _FRAMING:
            lines[key] = value.strip()
    text = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items())
    return text.encode()


class ConnectionPool:
    """Keep-alive connections to one origin, at most ``max_connections`` at once."""

    def __init__(
        self,
        origin: Origin,
        *,
        max_connections: int,
        connect_timeout_s: float,
        keepalive_s: float = KEEPALIVE_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = origin
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._loop: asyncio.AbstractEventLoop | None = None
        # https: the system's trust store unless a context is given (built on first connect,
        # since loading the CA bundle takes milliseconds).
        self._ssl = ssl_context
        self._idle: deque[Connection] = deque()  # the most recently used on the right
        self._open: set[Connection] = set()
        self._count = 0  # open connections plus those being opened
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def connections(self) -> int:
        """Connections open or being opened (each holds one of ``max_connections`` slots)."""
        return self._count

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(
        self, head: bytes, body: bytes, *, extra: bytes = b"", stream: bool, timeout_s: float
    ) -> Response:
        """Send ``head`` (from :func:`request_head`) + ``extra`` header lines + ``body``.

        Returns once the response head arrived. Without ``stream``, ``timeout_s`` bounds
        everything up to the end of the body; with it, the wait for a connection, the head and
        then every gap between body chunks. Raises the errors of
        :mod:`gateway.providers.http1_errors`.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        payload: bytes | list[bytes]
        if len(body) < _JOIN_LIMIT:
            payload = b"%s%scontent-length: %d\r\n\r\n%s" % (head, extra, len(body), body)
        else:
            payload = [b"%s%scontent-length: %d\r\n\r\n" % (head, extra, len(body)), body]
        fresh = False
        while True:
            connection = None if fresh else self._take_idle(loop)
            reused = connection is not None
            if connection is None:
                connection, reused = await self._acquire(deadline, timeout_s, fresh=fresh)
            try:
                connection.start(payload, deadline=None if stream else deadline, gap_s=timeout_s)
                await connection.wait_head()
                return Response(connection)
            except ConnectionClosed as exc:
                connection.close()
                if reused and exc.before_response and not fresh:
                    fresh = True
                    continue
                raise
            except BaseException:
                connection.close()
                raise

    async def aclose(self) -> None:
        """Close every connection; requests still running on one fail."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for connection in list(self._open):
            connection.close()
        # Waiters wake up holding a slot and find the pool closed when they try to connect.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._count += 1
                waiter.set_result(None)

    # --- taking a connection ----------------------------------------------------------------

    def _take_idle(self, loop: asyncio.AbstractEventLoop) -> Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            connection.idle = False
            if connection.usable and connection.idle_until > loop.time():
                return connection
            connection.close()
        return None

    async def _acquire(
        self, deadline: float, timeout_s: float, *, fresh: bool
    ) -> tuple[Connection, bool]:
        """A connection (and whether it was used before), opening one if a slot is free."""
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    if self._count < self.max_connections:
                        self._count += 1
                        return await self._open_reserved(), False
                    if fresh and self._idle:
                        self._idle[0].close()  # make room for the new connection
                        continue
                    handed = await self._wait_turn()
                    if handed is None:  # a slot was freed and reserved for us
                        return await self._open_reserved(), False
                    if not fresh:
                        return handed, True
                    handed.close()
        except TimeoutError:
            raise HTTPTimeout(
                f"no connection to {self.origin} could be had within {timeout_s:g}s"
            ) from None

    async def _wait_turn(self) -> Connection | None:
        assert self._loop is not None
        waiter: asyncio.Future[Connection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Cancelled just after being served: pass what we were given on.
                handed = waiter.result()
                if handed is None:
                    self._free_slot()
                else:
                    self._release(handed)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    async def _open_reserved(self) -> Connection:
        """Open a connection in a slot already counted for it."""
        try:
            connection = await self._dial()
        except BaseException:
            self._free_slot()
            raise
        self._open.add(connection)
        connection.attach(self._release, self._forget)
        return connection

    async def _dial(self) -> Connection:
        origin = self.origin
        if self._closed:
            raise ConnectError(f"the client for {origin} is closed")
        loop = self._loop
        assert loop is not None
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
                self._ssl.set_alpn_protocols(["http/1.1"])  # this client speaks nothing else
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise HTTPTimeout(
                f"connecting to {origin} timed out after {self.connect_timeout_s:g}s"
            ) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise ConnectError(f"could not connect to {origin}: {exc}") from None
        return connection

    # --- giving connections back ------------------------------------------------------------

    def _release(self, connection: Connection) -> None:
        """A connection whose exchange ended cleanly: to the first waiter, or to the idle list."""
        if self._closed:
            connection.close()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        limit = self.keepalive_s
        if connection.keep_alive_s is not None:
            # Leave before the server's own timeout, or we race its close.
            limit = min(limit, connection.keep_alive_s - 1.0)
        if limit <= 0:
            connection.close()
            return
        assert self._loop is not None
        connection.idle_until = self._loop.time() + limit
        connection.idle = True
        self._idle.append(connection)
        if self._reaper is None:
            self._reaper = self._loop.call_at(connection.idle_until, self._reap)

    def _forget(self, connection: Connection) -> None:
        """A connection closed (by either side): its slot is free."""
        self._open.discard(connection)
        if connection.idle:
            connection.idle = False
            with contextlib.suppress(ValueError):
                self._idle.remove(connection)
        self._free_slot()

    def _free_slot(self) -> None:
        # A freed slot goes to the first live waiter still counted, so nobody can jump the queue.
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._count -= 1

    def _reap(self) -> None:
        """Close idle connections past their time, so no socket lingers after traffic stops."""
        self._reaper = None
        assert self._loop is not None
        now = self._loop.time()
        for connection in [c for c in self._idle if c.idle_until <= now]:
            connection.close()
        if self._idle:
            wake = min(connection.idle_until for connection in self._idle)
            self._reaper = self._loop.call_at(wake, self._reap)
