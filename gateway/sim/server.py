"""The simulated model as a standalone OpenAI-compatible HTTP server (``tollgate sim``).

A raw ASGI app rather than a framework: it is also the upstream stub the benchmarks hammer, so a
request costs one dict lookup for routing and orjson for the body. Routes::

    POST /v1/chat/completions | /v1/completions | /v1/embeddings     the model
    GET  /v1/models, /v1/models/{id}                                 one model; any id is echoed
    GET  /healthz
    GET|POST /sim/config        read / change the settings (JSON object of SimConfig fields)
    GET  /sim/stats, POST /sim/stats/reset
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.providers.base import Endpoint
from gateway.sim.engine import SimEngine, SimReply, SimStream

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_MODEL_ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
}


class SimApp:
    """The ASGI application serving one :class:`SimEngine`."""

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; nothing else is served
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            endpoint = _MODEL_ENDPOINTS.get(path)
            if endpoint is not None:
                _allow(method, "POST")
                await self._model_call(endpoint, receive, send)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                _allow(method, "GET")
                await _json(send, 200, self._models(path.removeprefix("/v1/models").strip("/")))
            elif path == "/healthz":
                await _json(send, 200, {"status": "ok"})
            elif path == "/sim/config":
                if method == "POST":
                    changes = await _read_json(receive)
                    if not isinstance(changes, dict):
                        raise InvalidRequest("The config must be a JSON object.")
                    self.engine.configure(changes)
                await _json(send, 200, self.engine.config.as_dict())
            elif path == "/sim/stats":
                await _json(send, 200, self.engine.stats.as_dict())
            elif path == "/sim/stats/reset":
                _allow(method, "POST")
                self.engine.stats.reset()
                await _json(send, 200, self.engine.stats.as_dict())
            else:
                raise NotFound(f"Unknown path {path}.")
        except GatewayError as exc:
            await _send(send, exc.status, exc.body(), _JSON)

    def _models(self, model_id: str) -> dict[str, object]:
        def card(name: str) -> dict[str, object]:
            return {"id": name, "object": "model", "created": self.created, "owned_by": "tollgate"}

        if model_id:  # any id is "available": the sim answers for every model name
            return card(model_id)
        return {"object": "list", "data": [card(self.engine.config.model_name)]}

    async def _model_call(self, endpoint: Endpoint, receive: Receive, send: Send) -> None:
        # The engine parses the JSON, so a broken body is counted like any other bad request.
        result = await self.engine.handle(endpoint, await _read_body(receive))
        if isinstance(result, SimReply):
            await _send(send, result.status, result.body, _JSON)
        else:
            await _stream(result, receive, send)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise GatewayError(f"Method {method} not allowed; use {allowed}.", status=405)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


async def _read_json(receive: Receive) -> object:
    try:
        return orjson.loads(await _read_body(receive))
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [*headers, length]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: object) -> None:
    await _send(send, status, orjson.dumps(payload), _JSON)


async def _stream(stream: SimStream, receive: Receive, send: Send) -> None:
    """Send the events as they come; a client that goes away stops the generation.

    Headers go out with the first event, so time to first byte is the simulated TTFT. uvicorn
    (ASGI spec 2.3) drops writes to a closed connection silently, so the disconnect is noticed
    by waiting on ``receive`` alongside.
    """
    pump = asyncio.ensure_future(_pump(stream, send))
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, watch):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump  # re-raises what the pump raised, if it failed
        await stream.aclose()  # no-op when complete; counts a cancellation otherwise


async def _pump(stream: SimStream, send: Send) -> None:
    started = False
    while True:
        try:
            burst = await stream.next_burst()
        except StopAsyncIteration:
            break
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            started = True
        await send({"type": "http.response.body", "body": b"".join(burst), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Server(uvicorn.Server):
    """uvicorn's server, reporting its address once it listens (port 0 picks a free one)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[str, int], None]) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_listening(host, port)


def serve(
    engine: SimEngine,
    host: str = "127.0.0.1",
    port: int = 9101,
    on_listening: Callable[[str, int], None] | None = None,
) -> None:
    """Serve ``engine`` until SIGINT/SIGTERM, calling ``on_listening(host, port)`` when ready."""
    try:
        import uvloop  # noqa: F401 - only checking that it is installed

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(
        SimApp(engine),
        host=host,
        port=port,
        loop=loop,
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = _Server(config, on_listening or (lambda _host, _port: None))
    server.run()
