"""A raw HTTP/1.1 server on loopback whose every byte is scripted by the test.

For the gateway's own HTTP client (``gateway/providers/http1_*.py``): each test passes an
``answer`` coroutine that gets the parsed request, the connection's reader and writer, writes
whatever bytes it likes (good framing or bad), and returns whether to keep the connection for
the next request. The server records what it received and when a client hung up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the server read it."""

    head: bytes
    body: bytes
    connection: int  # the accepted connection it came on: 0, 1, ...

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.encode():
                return value.strip().decode()
        return None


Answer = Callable[[Received, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class ScriptedServer:
    """Serves ``answer`` on 127.0.0.1; ``hangups`` counts connections the client closed."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[Received] = []
        self.connections = 0
        self.hangups = 0
        self.hung_up = asyncio.Event()  # set whenever a client closes a connection
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.client_left()
                    return
                request = Received(head, b"", number)
                length = int(request.header("content-length") or 0)
                request = Received(head, await reader.readexactly(length), number)
                self.received.append(request)
                if not await self.answer(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_left()
        finally:
            writer.close()

    def client_left(self) -> None:
        self.hangups += 1
        self.hung_up.set()


async def wait_eof(reader: asyncio.StreamReader, server: ScriptedServer) -> None:
    """Wait (in an answer) until the client closes the connection, and record it."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    server.client_left()


@contextlib.asynccontextmanager
async def scripted_server(
    answer: Answer, tls: ssl.SSLContext | None = None
) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(answer)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        # Not wait_closed(): a handler still holding an answer ends with the test's loop.
        listener.close()


def response(body: bytes = b'{"ok":true}', status: int = 200, headers: bytes = b"") -> bytes:
    """A complete content-length response."""
    return b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s" % (
        status,
        headers,
        len(body),
        body,
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
