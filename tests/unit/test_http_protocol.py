"""The coalescing transport under uvicorn's protocol: one write per loop iteration, nothing lost.

Real sockets throughout: a socket pair for the transport's own contract, and a uvicorn server on
uvloop (as ``tollgate serve`` runs it) for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvloop
from starlette.types import Receive, Scope, Send

from gateway.api.context import RequestContext
from gateway.cli.http_protocol import CoalescingTransport
from tests.support.uvicorn_server import uvicorn_server


@contextlib.asynccontextmanager
async def wrapped_pair() -> AsyncIterator[tuple[CoalescingTransport, socket.socket]]:
    """A coalescing transport on one end of a socket pair; the other end, non-blocking."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    try:
        yield CoalescingTransport(transport, loop), peer
    finally:
        transport.abort()
        peer.close()


def received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b"(nothing)"


async def test_the_writes_of_one_iteration_leave_together_at_its_end() -> None:
    async with wrapped_pair() as (transport, peer):
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(bytearray(b"{"))
        transport.write(memoryview(b'"a":1}'))
        transport.write(b"")
        assert received(peer) == b"(nothing)"
        assert transport.get_write_buffer_size() == 26
        await asyncio.sleep(0)  # the flush was scheduled first, so it has run
        assert received(peer) == b'HTTP/1.1 200 OK\r\n\r\n{"a":1}'
        transport.write(b"next")
        await asyncio.sleep(0)
        assert received(peer) == b"next"


async def test_close_sends_what_was_gathered_first() -> None:
    async with wrapped_pair() as (transport, peer):
        transport.write(b"last words")
        transport.close()
        assert transport.is_closing()
        data = b""
        for _ in range(100):
            await asyncio.sleep(0.01)
            chunk = received(peer)
            if chunk == b"":  # EOF
                break
            if chunk != b"(nothing)":
                data += chunk
        assert data == b"last words"


async def test_abort_drops_what_was_gathered() -> None:
    async with wrapped_pair() as (transport, peer):
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0.05)
        assert received(peer) in (b"", b"(nothing)")


async def test_writing_after_the_peer_left_raises_nothing() -> None:
    async with wrapped_pair() as (transport, peer):
        peer.close()
        for _ in range(3):
            transport.write(b"x" * 1000)
            await asyncio.sleep(0.01)
        transport.close()


async def answer(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def, type-arg]
    """A JSON answer, or an SSE stream whose events are sent in one iteration and across
    several, with the request body echoed back."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/json":
        payload = b'{"echo":' + str(len(body)).encode() + b"}"
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for n in range(6):
        await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
        if n % 2:
            await asyncio.sleep(0.005)
    await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def running_server(app: object = None) -> AsyncIterator[int]:
    """uvicorn serving ``app`` (:func:`answer`) through the gateway's protocol; yields its port."""
    async with uvicorn_server(app or answer) as (_, port):
        yield port


def test_uvicorn_serves_json_and_streams_through_it_on_uvloop() -> None:
    async def main() -> None:
        async with (
            running_server() as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            for size in (0, 10, 300_000):  # keep-alive; a body bigger than one read
                reply = await client.post("/json", content=b"x" * size)
                assert reply.status_code == 200
                assert reply.json() == {"echo": size}
            async with client.stream("POST", "/sse", content=b"{}") as stream:
                text = b"".join([chunk async for chunk in stream.aiter_raw()])
            assert text == b"".join(b"data: %d\n\n" % n for n in range(6))
            assert (await client.post("/json", content=b"again")).json() == {"echo": 5}

    uvloop.run(main())


def test_a_complete_response_leaves_before_the_handlers_later_work() -> None:
    # The access log after the last send, and a task spawned before it (the budget's settle),
    # must not hold the answer back: the response is written as soon as it is complete.
    finished_work: list[float] = []
    started_tasks: list[float] = []

    async def busy_after(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def, type-arg]
        if scope["type"] != "http":
            return
        await receive()

        async def settle() -> None:
            time.sleep(0.2)  # noqa: ASYNC251 (blocks the loop, as a long first step would)
            started_tasks.append(time.monotonic())

        asyncio.ensure_future(settle())  # noqa: RUF006 (ends within the test)
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        time.sleep(0.2)  # noqa: ASYNC251 (bookkeeping after the last send, not yielding)
        finished_work.append(time.monotonic())

    def ask(port: int) -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"ok"):
                data += sock.recv(4096)
            return data, time.monotonic()

    async def main() -> None:
        async with running_server(busy_after) as port:
            data, answered = await asyncio.to_thread(ask, port)
            await asyncio.sleep(0.5)
        assert data.startswith(b"HTTP/1.1 200")
        assert answered < finished_work[0] < started_tasks[0]

    uvloop.run(main())


@pytest.mark.parametrize("pipelined", [2, 3])
def test_pipelined_requests_are_answered_in_order(pipelined: int) -> None:
    async def main() -> None:
        async with running_server() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = b"POST /json HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
            writer.write(b"".join(request % (n, b"y" * n) for n in range(pipelined)))
            await writer.drain()
            answers = []
            for _ in range(pipelined):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                answers.append(await reader.readexactly(length))
            writer.close()
            assert answers == [b'{"echo":%d}' % n for n in range(pipelined)]

    uvloop.run(main())


def test_a_request_hears_of_its_clients_departure_through_the_extension() -> None:
    heard: dict[str, asyncio.Event] = {}
    registered = asyncio.Event()

    async def waiting(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def, type-arg]
        if scope["type"] != "http":
            return
        watch = scope["extensions"]["tollgate.on_disconnect"]
        fired = heard[scope["path"]] = asyncio.Event()
        if scope["path"] == "/late":
            await asyncio.sleep(0.3)  # the client is gone before the callback is registered
        stop = watch(fired.set)
        if scope["path"] == "/stopped":
            stop()  # no longer interested: the callback must not run
        registered.set()
        await asyncio.sleep(1.0)

    async def main() -> None:
        async with running_server(waiting) as port:
            for path in ("/watched", "/stopped"):
                registered.clear()
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n" % path.encode()
                )
                await asyncio.wait_for(registered.wait(), 5)
                writer.close()
            await asyncio.wait_for(heard["/watched"].wait(), 5)
            await asyncio.sleep(0.2)
            assert not heard["/stopped"].is_set()

    uvloop.run(main())


def test_a_requests_clock_starts_at_its_first_byte_not_when_the_app_is_reached() -> None:
    # The head arrives in two pieces 0.2 s apart: the app is reached after the second, but
    # the request's timings (the access log's, the ledger's) start at the first.
    waited: list[float] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        waited.append(time.perf_counter() - scope["state"]["record"].started)
        await receive()
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        async with running_server(RequestContext(inner)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /slow HTTP/1.1\r\nhost: x\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"content-length: 0\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            # Sent whole, the next request on the connection is timed from its own first byte.
            writer.write(b"POST /quick HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            await reader.readuntil(b"ok")
            await reader.readuntil(b"ok")
            writer.close()

    uvloop.run(main())
    assert waited[0] >= 0.15
    assert waited[1] < 0.1
