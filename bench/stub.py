"""A lean OpenAI-compatible upstream stub for the benchmarks: ``python -m bench.stub``.

Why not ``tollgate sim``: the sim counts every prompt with tiktoken and runs under uvicorn, so on a
2-core machine it competes with the gateway for CPU and, with a 100k-token prompt, stalls its own
event loop. This stub is an ``asyncio.Protocol`` over ``httptools`` on uvloop: it never parses the
JSON body (it looks for ``"stream":true`` as bytes) and answers from templates, so it costs a few
microseconds a request and its latency is flat up to well past the gateway's throughput.

The mode is chosen by the path prefix, so one process serves both upstreams a policy names::

    POST /fast/v1/chat/completions    answers at once (JSON, or every SSE event in one write)
    POST /real/v1/chat/completions    SSE paced like a model: first token after --ttft-ms,
                                      then one token every 1/--tokens-per-s seconds
    POST /v1/chat/completions         same as /fast
    GET  /healthz, GET /stats         liveness; chat calls: {"requests", "streams", "bytes_in"}
    GET  /{mode}/v1/models            one model card

Prompt tokens in ``usage`` are estimated as body bytes / 4 (no tokenizer on purpose).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from typing import cast

import httptools
import orjson

# How a body asks for a stream, found without parsing it (the passthrough uses them too).
STREAM_MARKERS = (b'"stream":true', b'"stream": true')
_USAGE_MARKERS = (b'"include_usage":true', b'"include_usage": true')
_ID = b'"id":"chatcmpl-bench","created":1700000000,"model":"bench"'


@dataclass(frozen=True, slots=True)
class StubConfig:
    """How the stub answers: token counts and the pacing of ``/real``."""

    tokens: int = 16  # completion tokens per answer
    real_ttft_s: float = 0.020
    real_interval_s: float = 0.005  # 200 tokens/s


@dataclass(slots=True)
class StubStats:
    """Chat calls received: the harness proves with them that a cache hit never came here."""

    requests: int = 0
    streams: int = 0
    bytes_in: int = 0
    started: float = field(default_factory=time.time)


def json_answer(tokens: int, prompt_tokens: int) -> bytes:
    """A complete chat.completion body."""
    content = ("tok " * tokens).strip()
    usage = b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
        prompt_tokens,
        tokens,
        prompt_tokens + tokens,
    )
    return (
        b'{"object":"chat.completion",'
        + _ID
        + b',"choices":[{"index":0,"message":{"role":"assistant","content":'
        + orjson.dumps(content)
        + b'},"finish_reason":"stop"}],'
        + usage
        + b"}"
    )


def sse_events(tokens: int, prompt_tokens: int, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed answer: one per token, a final one, [DONE].

    The final chunk (finish_reason) and the optional usage chunk travel with the last token, as
    a real server flushes them together; ``[DONE]`` follows in the same write.
    """
    head = b'data: {"object":"chat.completion.chunk",' + _ID + b',"choices":[{"index":0,"delta":'
    events = [head + b'{"role":"assistant","content":"tok"},"finish_reason":null}]}\n\n']
    events.extend(
        head + b'{"content":" tok"},"finish_reason":null}]}\n\n' for _ in range(tokens - 1)
    )
    tail = head + b'{},"finish_reason":"stop"}]}\n\n'
    if include_usage:
        tail += (
            b'data: {"object":"chat.completion.chunk",' + _ID + b',"choices":[],'
            b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            % (prompt_tokens, tokens, prompt_tokens + tokens)
        )
    events[-1] += tail + b"data: [DONE]\n\n"
    return events


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(status: int, content_type: bytes, length: int | None) -> bytes:
    reason = b"OK" if status == 200 else b"Not Found"
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s\r\n\r\n" % (
        status,
        reason,
        content_type,
        framing,
    )


class StubProtocol(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, one request at a time."""

    def __init__(self, config: StubConfig, stats: StubStats) -> None:
        self._config = config
        self._stats = stats
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._timers: list[asyncio.TimerHandle] = []

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        # The client left mid-stream: stop generating, as a model server would.
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._transport = None

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body = []
        self._route(self._url.split(b"?", 1)[0], body)
        if (
            not self._parser.should_keep_alive()
            and self._transport is not None
            and not self._timers
        ):
            self._transport.close()

    # -- answers -----------------------------------------------------------------------------

    def _route(self, path: bytes, body: bytes) -> None:
        if path.endswith(b"/chat/completions"):
            self._chat(realistic=path.startswith(b"/real/"), body=body)
        elif path == b"/healthz":
            self._json(200, b'{"status":"ok"}')
        elif path == b"/stats":
            stats = self._stats
            payload = {"requests": stats.requests, "streams": stats.streams}
            self._json(200, orjson.dumps(payload | {"bytes_in": stats.bytes_in}))
        elif path.endswith(b"/models"):
            self._json(200, b'{"object":"list","data":[{"id":"bench","object":"model"}]}')
        else:
            self._json(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}')

    def _json(self, status: int, body: bytes) -> None:
        if self._transport is not None:
            self._transport.write(_head(status, b"application/json", len(body)) + body)

    def _chat(self, *, realistic: bool, body: bytes) -> None:
        config = self._config
        self._stats.requests += 1
        self._stats.bytes_in += len(body)
        prompt_tokens = max(1, len(body) // 4)
        if not any(marker in body for marker in STREAM_MARKERS):
            self._json(200, json_answer(config.tokens, prompt_tokens))
            return
        self._stats.streams += 1
        include_usage = any(marker in body for marker in _USAGE_MARKERS)
        events = sse_events(config.tokens, prompt_tokens, include_usage)
        head = _head(200, b"text/event-stream", None)
        transport = self._transport
        if transport is None:
            return
        if not realistic:
            transport.write(head + chunk(b"".join(events)) + b"0\r\n\r\n")
            return
        transport.write(head)
        loop = asyncio.get_running_loop()
        start = loop.time() + config.real_ttft_s
        last = len(events) - 1
        # Scheduled against the start time, not chained, so timer lateness does not accumulate.
        self._timers = [
            loop.call_at(start + i * config.real_interval_s, self._emit, events[i], i == last)
            for i in range(len(events))
        ]

    def _emit(self, event: bytes, last: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(chunk(event) + b"0\r\n\r\n" if last else chunk(event))
        if last:
            self._timers = []


async def serve(host: str, port: int, config: StubConfig) -> None:
    """Serve until SIGINT/SIGTERM; print the base URL once listening."""
    loop = asyncio.get_running_loop()
    stats = StubStats()
    server = await loop.create_server(
        lambda: StubProtocol(config, stats), host, port, reuse_address=True, backlog=1024
    )
    bound = server.sockets[0].getsockname()
    print(f"bench stub listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.stub [--port 0] [--ttft-ms 20] [--tokens-per-s 200] [--tokens 16]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.stub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per answer")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="/real: time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=200.0, help="/real: output speed")
    args = parser.parse_args(argv)
    config = StubConfig(
        tokens=max(1, args.tokens),
        real_ttft_s=args.ttft_ms / 1000,
        real_interval_s=1 / args.tokens_per_s if args.tokens_per_s > 0 else 0.0,
    )
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:  # the stub still works, only slower
            asyncio.run(serve(args.host, args.port, config))
        else:
            uvloop.run(serve(args.host, args.port, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
