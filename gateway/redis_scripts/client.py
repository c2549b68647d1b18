"""The client: Lua scripts by SHA over one pipelined connection, opened (again) on demand.

Failure semantics follow redis-py configured with ``fail_fast_options`` (what the limiter's
outage handling was written against):

* a refused connection raises ``redis.exceptions.ConnectionError`` at once;
* every call has a deadline (the socket timeout); past it the call raises
  :class:`CommandTimeout`, and so does every other call waiting on that connection, which is
  closed (replies after a timeout could no longer be matched to their callers);
* a call whose connection broke before its reply (a Redis restart found by the first write on
  an idle connection) is sent once more on a new connection, as redis-py's one retry on a
  broken pooled connection would (it may have run: the limiter's reserve and settle are
  idempotent by request id);
* NOSCRIPT (a restarted or flushed Redis) sends the script's source with EVAL, which also
  loads it, so the calls after it run by SHA again.

The connection is opened on the first call, and again on the first call after it broke;
callers arriving meanwhile wait for the same attempt (connect timeout = socket timeout).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from gateway.redis_scripts.connection import CommandTimeout, ConnectionClosed, ScriptConnection
from gateway.redis_scripts.resp import Arg, bulk, command, pack

_EVALSHA = bulk(b"EVALSHA")
_EVAL = bulk(b"EVAL")


@dataclass(frozen=True, slots=True)
class Address:
    """Where a standalone Redis is and how to log in (from a ``redis://`` URL)."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> Address | None:
        """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://``; None for anything
        else (unix sockets, Sentinel, query options): the caller keeps redis-py for those."""
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError:
            return None
        if parts.scheme not in ("redis", "rediss") or parts.query or parts.fragment:
            return None
        if not parts.hostname:
            return None
        db_text = unquote(parts.path).replace("/", "")
        if db_text and not db_text.isdigit():
            return None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if username and password is None:
            return None  # a user with no password: redis-py's business, not ours
        return cls(
            host=unquote(parts.hostname),
            port=port,
            db=int(db_text) if db_text else 0,
            username=username,
            password=password,
            tls=parts.scheme == "rediss",
        )


class Script:
    """A Lua script registered with :meth:`ScriptClient.register_script`: ``await
    script(keys, args)`` runs it by SHA (loading it with EVAL on NOSCRIPT)."""

    __slots__ = ("_client", "_evalsha_head", "sha", "source")

    def __init__(self, client: ScriptClient, source: str | bytes) -> None:
        self._client = client
        self.source = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()
        self._evalsha_head = _EVALSHA + bulk(self.sha.encode())

    def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Awaitable[Any]:
        # Encoded once: a retry on a new connection sends the same bytes.
        payload = pack(self._evalsha_head, 3 + len(keys) + len(args), (len(keys),), keys, args)
        return self._client.run(payload, self, keys, args)


class ScriptClient:
    """Runs Lua scripts on a standalone Redis. Build it with :meth:`from_url`; ``aclose``."""

    def __init__(self, address: Address, *, socket_timeout_s: float = 2.0) -> None:
        self.address = address
        self.socket_timeout_s = socket_timeout_s
        self._connection: ScriptConnection | None = None
        self._opening: asyncio.Task[ScriptConnection] | None = None
        self._closed = False
        self.connects = 0  # connections opened so far (a reconnect counts)

    @classmethod
    def from_url(cls, url: str, *, socket_timeout_s: float = 2.0) -> ScriptClient | None:
        """A client for ``url``, or None when its scheme or options are not supported."""
        address = Address.from_url(url)
        return cls(address, socket_timeout_s=socket_timeout_s) if address else None

    def register_script(self, source: str | bytes) -> Script:
        """``source`` as a callable script (nothing is sent until it is first called)."""
        return Script(self, source)

    @property
    def connection(self) -> ScriptConnection | None:
        """The current connection (open or last broken), for its counters."""
        return self._connection

    async def run(
        self, payload: bytes, script: Script, keys: Sequence[str], args: Sequence[Arg]
    ) -> Any:
        """Send an encoded EVALSHA of ``script``; see the module docstring for failures."""
        retried = loaded = False
        while True:
            connection = self._connection
            if connection is None or not connection.usable:
                connection = await self._connect()
            try:
                return await connection.send(payload)
            except NoScriptError:
                if loaded:
                    raise
                loaded = True
                count = 3 + len(keys) + len(args)
                payload = pack(_EVAL + bulk(script.source), count, (len(keys),), keys, args)
            except ConnectionClosed:
                if retried or self._closed:
                    raise
                retried = True

    async def aclose(self) -> None:
        """Close the connection; calls waiting on it fail with ConnectionError."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # --- connecting -------------------------------------------------------------------------

    async def _connect(self) -> ScriptConnection:
        if self._closed:
            raise RedisConnectionError("the script client is closed")
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.get_running_loop().create_task(self._open())
            opening.add_done_callback(self._opened)
        # Shielded: a caller that gives up must not cancel the attempt the others wait for.
        return await asyncio.shield(opening)

    def _opened(self, task: asyncio.Task[ScriptConnection]) -> None:
        self._opening = None
        # exception() also marks a failure as seen when every waiter gave up on it.
        if task.cancelled() or task.exception() is not None:
            return
        if self._closed:
            task.result().close()
        else:
            self._connection = task.result()

    async def _open(self) -> ScriptConnection:
        address = self.address
        loop = asyncio.get_running_loop()
        timeout_s = self.socket_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                _, connection = await loop.create_connection(
                    lambda: ScriptConnection(loop, timeout_s),
                    address.host,
                    address.port,
                    ssl=ssl.create_default_context() if address.tls else None,
                )
                try:
                    await self._handshake(connection)
                except BaseException:
                    connection.close()
                    raise
        except asyncio.CancelledError:
            if self._closed:  # by aclose: what the callers waiting for it see is a closed client
                raise RedisConnectionError("the script client is closed") from None
            raise
        except TimeoutError:
            raise CommandTimeout(
                f"Timeout connecting to {address.host}:{address.port} after {timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise RedisConnectionError(
                f"Error {exc.errno} connecting to {address.host}:{address.port}. "
                f"{exc.strerror or exc}"
            ) from exc
        self.connects += 1
        return connection

    async def _handshake(self, connection: ScriptConnection) -> None:
        # RESP2 throughout (no HELLO): AUTH and SELECT are pipelined in one write.
        address = self.address
        replies: list[asyncio.Future[Any]] = []
        if address.password is not None:
            login = (
                (address.username, address.password) if address.username else (address.password,)
            )
            replies.append(connection.send(command("AUTH", *login)))
        if address.db:
            replies.append(connection.send(command("SELECT", address.db)))
        if replies:
            # gather, not one await after another: a failed AUTH fails the SELECT too, and
            # gather retrieves that second exception instead of leaving it unobserved.
            await asyncio.gather(*replies)
