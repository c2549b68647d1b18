"""The gateway's uvicorn protocol: the coalescing transport (one write per loop iteration, nothing
lost), its ASGI extensions (disconnect callback, arrival time) and responses written directly.

Real sockets throughout: a socket pair for the transport's own contract, and a uvicorn server on
uvloop (as ``tollgate serve`` runs it) for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvloop
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.api.context import RESPOND_EXTENSION, RequestContext, header_lines
from gateway.cli.http_protocol import CoalescingTransport, DirectResponse
from gateway.record import RequestRecord
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


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response's head (up to the blank line) and its content-length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


def test_a_whole_response_goes_out_in_one_call_with_the_request_id_and_keeps_the_connection() -> (
    None
):
    finished: dict[str, int] = {}  # RequestContext also calls finish at the end: it is idempotent
    results: list[bool] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        respond = scope["extensions"][RESPOND_EXTENSION]
        body = b'{"path":"%s"}' % scope["path"].encode()
        head = header_lines({"content-type": "application/json", "x-tollgate-route": "chat"})
        results.append(respond.whole(201, head, body))

    def finish(record: RequestRecord) -> None:
        finished.setdefault(record.path, record.http_status)

    async def main() -> None:
        async with running_server(RequestContext(inner, finish=finish)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for path in (b"/one", b"/two"):  # the second on the same connection
                writer.write(b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n" % path)
                head, body = await read_response(reader)
                lines = head.split(b"\r\n")
                assert lines[0] == b"HTTP/1.1 201 Created"
                assert any(line.startswith(b"date: ") for line in lines)
                assert b"content-type: application/json" in lines
                assert b"x-tollgate-route: chat" in lines
                assert sum(line.startswith(b"x-request-id: req_") for line in lines) == 1
                assert b"connection: close" not in lines
                assert body == b'{"path":"%s"}' % path
            # A client that asked to close gets that, and the connection ends.
            writer.write(b"POST /three HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            head, body = await read_response(reader)
            assert b"connection: close" in head.split(b"\r\n")
            assert body == b'{"path":"/three"}'
            assert await reader.read() == b""
            writer.close()

    uvloop.run(main())
    assert results == [True, True, True]
    assert finished == {"/one": 201, "/two": 201, "/three": 201}


def test_respond_declines_where_send_must_answer_and_send_still_works() -> None:
    declined: dict[str, bool] = {}

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        respond = scope["extensions"][RESPOND_EXTENSION]
        if scope["method"] == "HEAD":  # no body may follow a HEAD's head
            declined["head"] = not respond.whole(200, "", b"body")
        elif scope["path"] == "/empty":  # a 204 carries no content-length
            declined["204"] = not respond.start(204, "")
        else:  # the response has started through send: respond may not start another
            start = {"type": "http.response.start", "status": 200, "headers": []}
            await send({**start, "headers": [(b"content-length", b"2")]})
            declined["started"] = not respond.whole(200, "", b"no") and not respond.start(200, "")
            await send({"type": "http.response.body", "body": b"ok"})
            return
        headers = [(b"content-length", b"0")] if scope["path"] != "/empty" else []
        status = 204 if scope["path"] == "/empty" else 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        async with running_server(RequestContext(inner)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.write(b"POST /empty HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 204")
            writer.write(b"POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            assert (await read_response(reader))[1] == b"ok"
            writer.close()

    uvloop.run(main())
    assert declined == {"head": True, "204": True, "started": True}


def test_direct_writes_decline_while_the_client_is_not_reading() -> None:
    # Flow control paused (the transport's buffer is full): send would wait for it to drain,
    # so each call hands its part back to send, and the cycle's state stays send's to continue.
    async def main() -> None:
        async with wrapped_pair() as (transport, peer):
            flow = FlowControl(transport)  # type: ignore[arg-type]
            cycle = RequestResponseCycle(
                scope={"method": "POST"},  # type: ignore[typeddict-item]
                transport=transport,  # type: ignore[arg-type]
                flow=flow,
                logger=logging.getLogger("test"),
                access_logger=logging.getLogger("test"),
                access_log=False,
                default_headers=[(b"date", b"today")],
                message_event=asyncio.Event(),
                expect_100_continue=False,
                keep_alive=True,
                on_response=lambda: None,
            )
            direct = DirectResponse(cycle)
            assert direct.chunk(b"early") is False  # nothing started yet
            flow.pause_writing()
            assert direct.whole(200, b"", b"x") is False
            assert direct.start(200, b"") is False
            assert not cycle.response_started
            flow.resume_writing()
            assert direct.start(200, b"a: b\r\n") is True
            flow.pause_writing()
            assert direct.chunk(b"one") is False
            # send waits for the client to read (here: resumed a moment later), then writes.
            asyncio.get_running_loop().call_later(0.01, flow.resume_writing)
            await cycle.send({"type": "http.response.body", "body": b"one", "more_body": True})
            assert direct.chunk(b"two") is True
            assert direct.end() is True
            assert cycle.response_complete and cycle.message_event.is_set()
            assert direct.end() is False and direct.chunk(b"late") is False
            await asyncio.sleep(0)
            assert received(peer) == (
                b"HTTP/1.1 200 OK\r\ndate: today\r\na: b\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
            )

    uvloop.run(main())


def test_a_stream_written_directly_is_chunked_and_accounted_for_at_its_end() -> None:
    finished_at: list[int] = []  # how many chunks were written when the request was accounted
    written: list[int] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        respond = scope["extensions"][RESPOND_EXTENSION]
        assert respond.start(200, header_lines({"content-type": "text/event-stream"}))
        for n in range(3):
            assert respond.chunk(b"data: %d\n\n" % n)
            written.append(n)
            await asyncio.sleep(0.01)
        assert respond.end()

    def finish(record: RequestRecord) -> None:
        if not finished_at:
            finished_at.append(len(written))

    async def main() -> None:
        async with (
            running_server(RequestContext(inner, finish=finish)) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            for _ in range(2):  # the connection is kept for the next request
                async with client.stream("POST", "/sse", content=b"{}") as stream:
                    assert stream.headers["transfer-encoding"] == "chunked"
                    assert stream.headers["x-request-id"].startswith("req_")
                    text = b"".join([chunk async for chunk in stream.aiter_raw()])
                assert text == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"

    uvloop.run(main())
    assert finished_at == [3]


def test_header_lines_refuse_a_value_that_would_break_the_head() -> None:
    assert header_lines({"a": "1", "b": "two\tthree"}) == "a: 1\r\nb: two\tthree\r\n"
    for bad in ("x\r\nset-cookie: y", "x\ny", "x\x00"):
        with pytest.raises(ValueError, match="invalid HTTP header value"):
            header_lines({"a": "1", "b": bad})
