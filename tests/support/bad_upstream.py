"""A misbehaving OpenAI-compatible upstream, for fault tests.

The first path segment picks the fault: ``http://127.0.0.1:PORT/<fault>/v1``. It runs in the
test's own event loop (aiohttp's web server), so every byte it sends is under the test's control.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from aiohttp import web


def _chunk(text: str, finish: str | None = None) -> bytes:
    payload = {
        "id": "chatcmpl-bad",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bad",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# cl100k and o200k count it differently (30 and 21 tokens): the wrong tokenizer shows.
NO_USAGE_ANSWER = "Die Größenwahn-Naïveté 東京タワーの夜景は綺麗です"


class BadUpstream:
    """Serves ``/{fault}/v1/...``; ``calls`` counts requests per fault."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.disconnected = asyncio.Event()
        self.port = 0

    def url(self, fault: str) -> str:
        return f"http://127.0.0.1:{self.port}/{fault}/v1"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        fault = request.match_info["fault"]
        self.calls[fault] += 1
        if fault == "invalid-json":
            return web.Response(body=b"{not json", content_type="application/json")
        if fault == "error-500":
            body = {"error": {"message": "the GPU caught fire", "type": "server_error"}}
            return web.Response(
                status=500, body=orjson.dumps(body), content_type="application/json"
            )
        if fault == "rate-limited":
            body = {"error": {"message": "slow down", "type": "rate_limit_error"}}
            return web.Response(
                status=429,
                body=orjson.dumps(body),
                content_type="application/json",
                headers={"retry-after": "7"},
            )
        if fault == "bad-request":
            body = {"error": {"message": "temperature is too hot", "type": "invalid_request_error"}}
            return web.Response(
                status=400, body=orjson.dumps(body), content_type="application/json"
            )
        if fault == "no-usage":
            # An answer that reports no usage: the gateway must count it itself.
            answer = {
                "id": "chatcmpl-bad",
                "object": "chat.completion",
                "created": 0,
                "model": "bad",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": NO_USAGE_ANSWER},
                        "finish_reason": "stop",
                    }
                ],
            }
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        if fault == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.disconnected.set()
                raise
            return web.Response(body=b"{}", content_type="application/json")
        if fault in ("cut-stream", "endless-stream"):
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            try:
                for index in range(3 if fault == "cut-stream" else 10_000):
                    await response.write(_chunk(f"tok{index} "))
                    await asyncio.sleep(0.01 if fault == "cut-stream" else 0.05)
            except (ConnectionResetError, asyncio.CancelledError):
                self.disconnected.set()
                raise
            # Cut the connection without a [DONE]: the gateway must report an error.
            if request.transport is not None:
                request.transport.close()
            return response
        return web.Response(status=404, text="unknown fault")


@asynccontextmanager
async def bad_upstream() -> AsyncIterator[BadUpstream]:
    server = BadUpstream()
    app = web.Application()
    app.router.add_route("*", "/{fault}/v1/{path:.*}", server.handle)
    # handler_cancellation: a handler whose client left (the gateway timed out) stops at once.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.port = sock.getsockname()[1]
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield server
    finally:
        await runner.cleanup()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port
