"""The gateway's HTTP/1.1 client (``gateway/providers/http1_*.py``) against real loopback servers.

No mocks: every byte comes from a scripted server (``tests/support/scripted_http.py``) over a
real socket. Each test runs twice, on asyncio's own loop and on uvloop (what the gateway serves
on), because their transports differ in exactly the places a client depends on.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.errors import UpstreamProtocolError
from gateway.policy.schema import OpenAIProvider
from gateway.providers.base import Endpoint, UpstreamRequest
from gateway.providers.http1_errors import (
    ConnectError,
    ConnectionClosed,
    HTTPTimeout,
    ProtocolError,
)
from gateway.providers.http1_pool import ConnectionPool, Origin, request_head
from gateway.providers.http1_response import Response
from gateway.providers.openai_compat import OpenAIStream, OpenAIUpstream
from tests.support.bad_upstream import closed_port
from tests.support.scripted_http import (
    Received,
    ScriptedServer,
    chunk,
    response,
    scripted_server,
    wait_eof,
)

Scenario = Callable[[], Coroutine[Any, Any, None]]
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-test"}
OK = b'{"ok":true}'


def on_both_loops(scenario: Scenario) -> Callable[[str], None]:
    """Turn an async scenario into a test run once per event loop, bounded to 10 s."""

    def run(loop: str) -> None:
        runner = uvloop.run if loop == "uvloop" else asyncio.run
        runner(asyncio.wait_for(scenario(), 10))

    run.__name__, run.__doc__ = scenario.__name__, scenario.__doc__
    return pytest.mark.parametrize("loop", ["asyncio", "uvloop"])(run)


def pool_for(server: ScriptedServer, **fields: Any) -> ConnectionPool:
    fields.setdefault("max_connections", 4)
    fields.setdefault("connect_timeout_s", 2.0)
    return ConnectionPool(Origin.parse(server.base_url), **fields)


async def post(
    pool: ConnectionPool, body: bytes = b"{}", *, stream: bool = False, timeout_s: float = 2.0
) -> Response:
    head = request_head(pool.origin, "POST", f"{pool.origin.path}/chat/completions", HEADERS)
    return await pool.request(
        head, body, extra=b"x-request-id: req-1\r\n", stream=stream, timeout_s=timeout_s
    )


async def fetch(pool: ConnectionPool, body: bytes = b"{}", timeout_s: float = 2.0) -> bytes:
    return await (await post(pool, body, timeout_s=timeout_s)).read()


async def ok(request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(response(OK))
    return True


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never became true")
        await asyncio.sleep(0.005)


async def collect(stream: Response) -> list[bytes]:
    return [data async for data in stream]


# --- keep-alive and framing -------------------------------------------------------------------


@on_both_loops
async def test_keep_alive_reuses_one_connection() -> None:
    async with scripted_server(ok) as server:
        pool = pool_for(server)
        for _ in range(3):
            assert await fetch(pool) == OK
        assert (server.connections, pool.connections, pool.idle_connections) == (1, 1, 1)
        first = server.received[0]
        assert first.head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert first.header("host") == f"127.0.0.1:{server.port}"
        assert first.header("content-length") == "2" and first.body == b"{}"
        assert first.header("authorization") == "Bearer sk-test"
        assert first.header("x-request-id") == "req-1"
        await pool.aclose()
        await until(lambda: server.hangups == 1)
        assert pool.connections == 0


@on_both_loops
async def test_bodies_by_content_length_chunked_and_until_close() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.body == b"length":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello")
        elif request.body == b"chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"hel"))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.02)  # the rest comes in a later read
        if request.body == b"chunked":
            writer.write(chunk(b"lo world") + b"0\r\n\r\n")
        else:
            writer.write(b" world")
        await writer.drain()
        return request.body != b"close"  # a body without framing ends with the connection

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        assert await fetch(pool, b"length") == b"hello world"
        assert await fetch(pool, b"chunked") == b"hello world"
        assert server.connections == 1
        assert await fetch(pool, b"close") == b"hello world"
        assert pool.connections == 0  # ended by the close: not reusable
        assert await fetch(pool, b"length") == b"hello world"
        assert server.connections == 2
        await pool.aclose()


@on_both_loops
async def test_large_bodies_both_ways() -> None:
    async def echo(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(response(request.body[::-1]))
        return True

    big = bytes(range(256)) * 8192  # 2 MiB: written as two buffers, read over many reads
    async with scripted_server(echo) as server:
        pool = pool_for(server)
        assert await fetch(pool, big) == big[::-1]
        assert await fetch(pool, b"small") == b"llams"
        assert server.connections == 1
        await pool.aclose()


@on_both_loops
async def test_a_stream_yields_chunks_as_they_arrive() -> None:
    gate = asyncio.Event()

    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"first"))
        await gate.wait()  # the client must see "first" before the rest exists
        writer.write(chunk(b"second") + chunk(b"third") + b"0\r\n\r\n")
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        stream = await post(pool, stream=True)
        assert stream.status == 200
        assert await anext(stream) == b"first"
        gate.set()
        assert b"".join(await collect(stream)) == b"secondthird"
        assert pool.idle_connections == 1  # read to the end: back in the pool
        await pool.aclose()


@on_both_loops
async def test_connection_close_and_interim_responses() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.body == b"close":
            writer.write(response(OK, headers=b"connection: close\r\n"))
            await wait_eof(reader, server)  # the client must close it, not reuse it
            return False
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(OK))
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        assert await fetch(pool, b"close") == OK
        await asyncio.wait_for(server.hung_up.wait(), 2)
        assert pool.connections == 0
        reply = await post(pool, b"interim")
        assert reply.status == 200 and await reply.read() == OK
        assert pool.idle_connections == 1
        await pool.aclose()


@on_both_loops
async def test_gzip_is_decoded_and_other_encodings_fail_clearly() -> None:
    text = b'{"answer":"' + b"tok " * 2000 + b'"}'
    packed = gzip.compress(text)

    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.body == b"br":
            writer.write(response(b"\x1b\x00", headers=b"content-encoding: br\r\n"))
        elif request.body == b"stream":
            head = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n"
            pieces = [chunk(packed[i : i + 100]) for i in range(0, len(packed), 100)]
            writer.write(head + b"\r\n" + b"".join(pieces) + b"0\r\n\r\n")
        else:
            writer.write(response(packed, headers=b"content-encoding: gzip\r\n"))
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        assert await fetch(pool, b"json") == text
        assert b"".join(await collect(await post(pool, b"stream", stream=True))) == text
        with pytest.raises(ProtocolError, match="content-encoding 'br'"):
            await fetch(pool, b"br")
        await pool.aclose()


@on_both_loops
async def test_a_slow_reader_pauses_the_socket_without_losing_bytes() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    pieces = 64  # 4 MiB: far past the client's high-water mark

    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(pieces):
            writer.write(chunk(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        stream = await post(pool, stream=True)
        await asyncio.sleep(0.2)  # the server fills the socket while nobody reads
        received = b"".join(await collect(stream))
        assert len(received) == pieces * len(piece) and received == piece * pieces
        assert pool.idle_connections == 1
        await pool.aclose()


# --- stale connections, retries and broken answers -----------------------------------------


@on_both_loops
async def test_a_stale_pooled_connection_is_retried_on_a_fresh_one() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.connection == 0 and request is not server.received[0]:
            return False  # the keep-alive race: closed as the next request arrives, unanswered
        writer.write(response(OK))
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        assert await fetch(pool) == OK
        assert await fetch(pool) == OK  # reused, found closed, sent again on a new connection
        assert server.connections == 2 and len(server.received) == 3
        await pool.aclose()


@on_both_loops
async def test_a_reset_pooled_connection_is_retried_too() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.connection == 0 and request is not server.received[0]:
            writer.transport.abort()  # RST instead of FIN
            return False
        writer.write(response(OK))
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        assert await fetch(pool) == OK
        assert await fetch(pool) == OK
        assert server.connections == 2
        await pool.aclose()


@on_both_loops
async def test_a_connection_closed_while_idle_is_dropped_from_the_pool() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(response(OK))
        await writer.drain()
        return False  # the server's idle timeout, right away (no connection: close header)

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        assert await fetch(pool) == OK
        await until(lambda: pool.connections == 0)
        assert await fetch(pool) == OK
        assert len(server.received) == 2
        await pool.aclose()


@on_both_loops
async def test_the_retry_happens_once_and_never_on_a_new_connection() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request is server.received[0]:
            writer.write(response(OK))
            return True
        return False  # every later request: closed unanswered

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        assert await fetch(pool) == OK
        with pytest.raises(ConnectionClosed, match="without answering"):
            await fetch(pool)
        assert len(server.received) == 3  # the first, the reused try, one fresh try
        with pytest.raises(ConnectionClosed):
            await fetch(pool)  # a fresh connection that fails is not retried
        assert len(server.received) == 4
        assert pool.connections == 0
        await pool.aclose()


@on_both_loops
async def test_a_server_closing_mid_body_is_a_protocol_error() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.body == b"fine":
            writer.write(response(OK))
            return True
        if request.body == b"stream":
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            writer.write(head + b"transfer-encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
        await writer.drain()
        return False

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        assert await fetch(pool, b"fine") == OK
        with pytest.raises(ConnectionClosed, match="middle of the response"):
            await fetch(pool, b"cut")  # on a reused connection, yet not retried: bytes came
        assert len(server.received) == 2
        stream = await post(pool, b"stream", stream=True)
        assert await anext(stream) == b"data: 1\n\n"  # what came is delivered, then the error
        with pytest.raises(ProtocolError):
            await anext(stream)
        assert pool.connections == 0
        await pool.aclose()


@on_both_loops
async def test_a_malformed_response_is_a_protocol_error() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 abc\r\n\r\n")
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        with pytest.raises(ProtocolError, match="malformed"):
            await fetch(pool)
        assert pool.connections == 0
        await pool.aclose()


@on_both_loops
async def test_connection_refused() -> None:
    pool = ConnectionPool(
        Origin.parse(f"http://127.0.0.1:{closed_port()}/v1"),
        max_connections=1,
        connect_timeout_s=1.0,
    )
    with pytest.raises(ConnectError, match="could not connect"):
        await fetch(pool)
    assert pool.connections == 0
    await pool.aclose()


# --- timeouts, early close and cancellation ----------------------------------------------------


@on_both_loops
async def test_a_response_that_never_comes_times_out_and_closes_the_socket() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.body == b"fine":
            writer.write(response(OK))
            return True
        if request.body == b"half":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
        await wait_eof(reader, server)
        return False

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        started = time.monotonic()
        with pytest.raises(HTTPTimeout, match=r"no response within 0\.2s"):
            await fetch(pool, b"silent", timeout_s=0.2)
        assert 0.15 < time.monotonic() - started < 1.5
        await asyncio.wait_for(server.hung_up.wait(), 2)  # the upstream learns we left
        assert pool.connections == 0

        # A long deadline first, then a short one on the same connection: the short one holds.
        assert await fetch(pool, b"fine", timeout_s=30) == OK
        server.hung_up.clear()
        started = time.monotonic()
        with pytest.raises(HTTPTimeout, match=r"did not complete within 0\.2s"):
            await fetch(pool, b"half", timeout_s=0.2)
        assert 0.15 < time.monotonic() - started < 1.5
        assert server.connections == 2  # it was the reused connection
        await asyncio.wait_for(server.hung_up.wait(), 2)
        assert pool.connections == 0
        await pool.aclose()


@on_both_loops
async def test_a_stream_gap_times_out_but_a_steady_stream_does_not() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        if request.body == b"steady":  # 0.5 s in all, never more than 0.05 s apart
            for _ in range(10):
                writer.write(chunk(b"tok "))
                await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            return True
        writer.write(chunk(b"tok "))
        await wait_eof(reader, server)
        return False

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        steady = await post(pool, b"steady", stream=True, timeout_s=0.3)
        assert b"".join(await collect(steady)) == b"tok " * 10
        stalled = await post(pool, b"stalled", stream=True, timeout_s=0.2)
        assert await anext(stalled) == b"tok "
        with pytest.raises(HTTPTimeout, match=r"sent nothing for 0\.2s"):
            await anext(stalled)
        await asyncio.wait_for(server.hung_up.wait(), 2)
        await pool.aclose()


@on_both_loops
async def test_closing_a_stream_early_closes_the_socket() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"tok"))
        await wait_eof(reader, server)  # an endless generation, until the client leaves
        return False

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        stream = await post(pool, stream=True)
        assert await anext(stream) == b"tok"
        stream.close()
        await asyncio.wait_for(server.hung_up.wait(), 2)
        assert pool.connections == 0
        await pool.aclose()


@on_both_loops
async def test_close_after_end_keeps_the_connection_only_if_the_message_ends() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"data: [DONE]\n\n")
        )
        await writer.drain()
        if request.body == b"never":
            await wait_eof(reader, server)
            return False
        await asyncio.sleep(0.05)  # the last chunk comes after the reader stopped
        writer.write(b"0\r\n\r\n")
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server)
        stream = await post(pool, b"ends", stream=True)
        assert await anext(stream) == b"data: [DONE]\n\n"
        stream.close_after_end(1.0)
        await until(lambda: pool.idle_connections == 1)
        stream = await post(pool, b"never", stream=True)
        assert server.connections == 1  # the lingering connection was reused
        await anext(stream)
        stream.close_after_end(0.1)
        await asyncio.wait_for(server.hung_up.wait(), 2)
        assert pool.connections == 0
        await pool.aclose()


@on_both_loops
async def test_cancelling_a_request_closes_its_socket_and_frees_its_slot() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.body == b"hold":
            await wait_eof(reader, server)
            return False
        if request.body == b"stream":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"a"))
            await wait_eof(reader, server)
            return False
        writer.write(response(OK))
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server, max_connections=1)
        waiting = asyncio.ensure_future(fetch(pool, b"hold"))
        await until(lambda: len(server.received) == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.connections == 0
        await asyncio.wait_for(server.hung_up.wait(), 2)
        assert await fetch(pool) == OK  # the only slot is free again

        stream = await post(pool, b"stream", stream=True)
        assert await anext(stream) == b"a"
        server.hung_up.clear()
        reading = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.02)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert pool.connections == 0
        await asyncio.wait_for(server.hung_up.wait(), 2)
        assert await fetch(pool) == OK
        await pool.aclose()


@on_both_loops
async def test_at_the_limit_a_request_waits_for_a_free_connection() -> None:
    gate = asyncio.Event()

    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        await gate.wait()
        writer.write(response(request.body))
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server, max_connections=1)
        first = asyncio.ensure_future(fetch(pool, b"1"))
        second = asyncio.ensure_future(fetch(pool, b"2"))
        given_up = asyncio.ensure_future(fetch(pool, b"3"))
        await until(lambda: len(server.received) == 1)
        await asyncio.sleep(0.05)
        assert len(server.received) == 1 and pool.connections == 1  # the others wait
        given_up.cancel()  # a waiter that leaves takes nothing with it
        with pytest.raises(asyncio.CancelledError):
            await given_up
        with pytest.raises(HTTPTimeout, match="no connection"):
            await fetch(pool, b"4", timeout_s=0.1)
        gate.set()
        assert list(await asyncio.gather(first, second)) == [b"1", b"2"]
        assert server.connections == 1  # handed from the first request to the second
        assert (pool.connections, pool.idle_connections) == (1, 1)
        await pool.aclose()


@on_both_loops
async def test_idle_connections_expire() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        hint = b"keep-alive: timeout=1\r\n" if request.body == b"hint" else b""
        writer.write(response(OK, headers=hint))
        return True

    async with scripted_server(answer) as server:
        pool = pool_for(server, keepalive_s=0.1)
        assert await fetch(pool) == OK
        assert pool.idle_connections == 1
        await until(lambda: pool.connections == 0)  # closed by the pool after 0.1 s idle
        await asyncio.wait_for(server.hung_up.wait(), 2)
        pool.keepalive_s = 30.0
        assert await fetch(pool, b"hint") == OK
        assert pool.connections == 0  # the server keeps it 1 s: too short to race for
        await pool.aclose()


# --- TLS and the request head ------------------------------------------------------------------


def _certificate(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_https_sends_sni_and_the_host_header(loop: str, tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    names: list[str | None] = []
    server: ScriptedServer
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)

    def record_name(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        names.append(name)

    server_side.sni_callback = record_name

    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request.body == b"stream":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"a"))
            await wait_eof(reader, server)
            return False
        writer.write(response(OK))
        return True

    async def scenario() -> None:
        nonlocal server
        async with scripted_server(answer, tls=server_side) as server:
            client_side = ssl.create_default_context(cafile=str(cert))
            origin = Origin.parse(f"https://localhost:{server.port}/v1")
            pool = ConnectionPool(
                origin, max_connections=2, connect_timeout_s=2.0, ssl_context=client_side
            )
            assert await fetch(pool) == OK
            assert await fetch(pool) == OK
            assert server.connections == 1
            assert server.received[0].header("host") == f"localhost:{server.port}"
            assert names == ["localhost"]
            stream = await post(pool, b"stream", stream=True)
            assert await anext(stream) == b"a"
            stream.close()  # over TLS too, the upstream sees the connection go at once
            await asyncio.wait_for(server.hung_up.wait(), 1)
            await pool.aclose()

            untrusted = ConnectionPool(origin, max_connections=1, connect_timeout_s=2.0)
            with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await fetch(untrusted)  # the system trust store does not know our certificate
            await untrusted.aclose()

    (uvloop.run if loop == "uvloop" else asyncio.run)(asyncio.wait_for(scenario(), 10))


def test_the_request_head() -> None:
    assert Origin.parse("https://api.example.com/v1").authority == "api.example.com"
    assert Origin.parse("http://example.com:80").authority == "example.com"
    assert Origin.parse("http://[::1]:8080/v1").authority == "[::1]:8080"
    origin = Origin.parse("http://user:p%40ss@10.0.0.1:8000/openai/v1/")
    assert origin.path == "/openai/v1"
    head = request_head(
        origin,
        "POST",
        "/openai/v1/embeddings",
        {"Content-Length": "5", "Host": "models.internal", "X-Org": "acme"},
    )
    assert head == (
        b"POST /openai/v1/embeddings HTTP/1.1\r\nhost: models.internal\r\n"
        b"authorization: Basic dXNlcjpwQHNz\r\nx-org: acme\r\n"
    )
    with pytest.raises(ValueError, match="line break"):
        request_head(origin, "POST", "/v1", {"x-evil": "a\r\nhost: elsewhere"})
    with pytest.raises(ValueError, match="request path"):
        request_head(origin, "POST", "/v1 HTTP/1.0", {})


# --- the openai provider on top of it ----------------------------------------------------------


def _request(stream: bool = False) -> UpstreamRequest:
    return UpstreamRequest(
        endpoint=Endpoint.CHAT,
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream},
        stream=stream,
        timeout_s=2.0,
        request_id="req-42",
    )


@on_both_loops
async def test_the_openai_provider_sends_its_headers_and_fails_over_a_refused_replica() -> None:
    answer = b'{"usage":{"prompt_tokens":3,"completion_tokens":1}}'

    async def reply(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(response(answer))
        return True

    async with scripted_server(reply) as server:
        spec = OpenAIProvider.model_validate(
            {
                "type": "openai",
                "base_urls": [f"http://127.0.0.1:{closed_port()}/v1", server.base_url],
                "api_key": "sk-upstream",
                "headers": {"X-Org": "acme", "Content-Length": "5", "X-Request-Id": "no"},
            }
        )
        upstream = OpenAIUpstream("pool", spec)
        for _ in range(4):  # whichever replica the balancer tries first, the answer comes
            result = await upstream.send(_request())
            assert result.status == 200 and result.body == answer
            assert result.usage is not None and result.usage.prompt_tokens == 3
        seen = server.received[0]
        assert seen.header("authorization") == "Bearer sk-upstream"
        assert seen.header("x-org") == "acme"
        assert seen.header("x-request-id") == "req-42"
        assert seen.header("accept-encoding") == "identity"
        assert seen.header("content-type") == "application/json"
        assert seen.head.lower().count(b"content-length") == 1
        assert int(seen.header("content-length") or 0) == len(seen.body)
        assert server.connections == 1
        assert upstream.balancer.in_flight == [0, 0]
        await upstream.aclose()


@on_both_loops
async def test_the_openai_provider_reports_a_cut_stream_and_frees_the_replica() -> None:
    async def answer(
        request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        events = b"data: {}\n\ndata: {}\n\n"
        writer.write(head + b"transfer-encoding: chunked\r\n\r\n" + chunk(events))
        await writer.drain()
        return False

    async with scripted_server(answer) as server:
        upstream = OpenAIUpstream(
            "cut", OpenAIProvider.model_validate({"type": "openai", "base_urls": [server.base_url]})
        )
        stream = await upstream.open_stream(_request(stream=True))
        assert isinstance(stream, OpenAIStream)
        received = []
        with pytest.raises(UpstreamProtocolError, match="broke"):
            async for event in stream:
                received.append(event)
        assert received == [b"data: {}\n\n", b"data: {}\n\n"]
        assert upstream.balancer.in_flight == [0]
        await upstream.aclose()
