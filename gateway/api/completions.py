"""POST /v1/chat/completions, /v1/completions and /v1/embeddings, in raw ASGI.

These three carry nearly all of a gateway's traffic, so they skip the framework: no walk of the
route table, no dependency solving, no Request or Response objects, no second task to watch for
a client leaving. Everything else (models, admin, reports, health, metrics) stays on FastAPI,
which this layer passes through untouched.

The handler is as thin as the FastAPI ones were: authenticate, read and check the body, hand it to
the pipeline, send what it returns. Errors become the OpenAI envelope here; an unexpected
exception goes up to :class:`gateway.api.context.RequestContext`, which answers 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import validate
from gateway.api.context import RESPOND_EXTENSION, AccountedResponse, header_lines
from gateway.api.deps import api_key
from gateway.api.failures import note_error
from gateway.errors import ClientGone, GatewayError, InvalidRequest, PayloadTooLarge
from gateway.pipeline import JsonResult, StreamResult
from gateway.providers.base import Endpoint
from gateway.record import RequestRecord

if TYPE_CHECKING:
    from gateway.app import Services

T = TypeVar("T")
# The ASGI extension `tollgate serve`'s protocol offers (gateway.cli.http_protocol):
# watch(callback) -> stop; the callback runs if the client's connection is lost meanwhile.
DISCONNECT_EXTENSION = "tollgate.on_disconnect"
Watch = Callable[[Callable[[], None]], Callable[[], object]]

ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
}
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_SSE_LINES = "".join(f"{name.decode()}: {value.decode()}\r\n" for name, value in _SSE_HEADERS)
_JSON = "application/json"


class CompletionEndpoints:
    """Serves the three OpenAI POST endpoints; passes every other request to ``app``."""

    def __init__(self, app: ASGIApp, services: Callable[[], Services]) -> None:
        self.app = app
        self._services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = ENDPOINTS.get(scope["path"])
            if endpoint is not None:
                if scope["method"] == "POST":
                    await self._serve(endpoint, scope, receive, send)
                else:
                    await _refuse_method(scope, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        record: RequestRecord = scope["state"]["record"]
        found = self._services()
        # ASGI header names are lower case already; a repeated header keeps its last value.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            caller = await found.keys.resolve(api_key(headers), found.policies.current)
            record.team, record.key_id = caller.team, caller.key_id
            raw = await read_body(receive, headers, found.settings.max_body_bytes)
            record.body_bytes = len(raw)
            body = validate.parse_body(raw)
            validate.check(endpoint, body)
            handling = found.pipeline.handle(endpoint, body, caller, record, headers)
            result: JsonResult | StreamResult | None
            if body.get("stream"):
                result = await handling
            else:
                # A JSON request's client that leaves cancels the work, closing the upstream
                # request: a generation nobody will read stops costing money.
                result = await unless_client_leaves(receive, handling, _watch(scope))
                if result is None:
                    record.status, record.error_type = "client_disconnect", "client_disconnect"
                    await _send_whole(scope, send, 499, {}, b"")
                    return
        except GatewayError as error:
            note_error(record, error)
            headers_out = {"content-type": _JSON}
            headers_out.update(error.headers)
            await _send_whole(scope, send, error.status, headers_out, error.body())
            return
        if isinstance(result, StreamResult):
            await _send_stream(scope, send, receive, result, _watch(scope))
        else:
            await _send_json(scope, send, result)


async def _refuse_method(scope: Scope, send: Send) -> None:
    error = InvalidRequest(
        f"Method {scope['method']} is not allowed for {scope['path']}; use POST.",
        status=405,
        code="method_not_allowed",
    )
    note_error(scope["state"]["record"], error)
    headers = {"content-type": _JSON, "allow": "POST"}
    await _send_whole(scope, send, 405, headers, error.body())


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit}.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("The client disconnected while sending its request.")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def unless_client_leaves(
    receive: Receive, work: Awaitable[T], watch: Watch | None = None
) -> T | None:
    """Await ``work`` in this task; if the client disconnects first, cancel it and return None.

    ``watch`` is the server's ``tollgate.on_disconnect`` extension when it has one (``tollgate
    serve`` does): the connection's loss cancels the work through a callback. Without it, one
    watcher task per request awaits ``receive()`` (the body has been read, so the next ASGI
    message can only be the disconnect). Either way the work runs here, not in a task of its
    own.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def left() -> None:
        nonlocal gone
        gone = True
        task.cancel()

    async def watch_receive() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        left()

    stop = watch(left) if watch is not None else asyncio.ensure_future(watch_receive()).cancel
    try:
        return await work
    except asyncio.CancelledError:
        # Only our own cancel is swallowed; a shutdown's is not.
        if gone and task.uncancel() == 0:
            return None
        raise
    finally:
        stop()


def _watch(scope: Scope) -> Watch | None:
    found: Watch | None = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
    return found


def _encode(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def _send_whole(
    scope: Scope, send: Send, status: int, headers: dict[str, str], body: bytes
) -> None:
    """A whole response: in one call where the server offers ``tollgate.respond``."""
    direct = _direct(scope)
    if direct is not None and direct.whole(status, header_lines(headers), body):
        return
    encoded = _encode(headers)
    encoded.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": encoded})
    await send({"type": "http.response.body", "body": body})


async def _send_json(scope: Scope, send: Send, result: JsonResult) -> None:
    headers = {"content-type": result.content_type}
    headers.update(result.headers)
    await _send_whole(scope, send, result.status, headers, result.body)


async def _send_stream(
    scope: Scope, send: Send, receive: Receive, result: StreamResult, watch: Watch | None
) -> None:
    """Relay events as they come; a client that leaves cancels the relay (its upstream request
    is closed and what was generated is charged, by the relay's own handling)."""
    events = result.events
    direct = _direct(scope)

    async def relay() -> None:
        if direct is None or not direct.start(200, _SSE_LINES + header_lines(result.headers)):
            headers = [*_SSE_HEADERS, *_encode(result.headers)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for event in events:
            if direct is None or not direct.chunk(event):
                await send({"type": "http.response.body", "body": event, "more_body": True})
        if direct is None or not direct.end():
            await send({"type": "http.response.body", "body": b""})

    try:
        await unless_client_leaves(receive, relay(), watch)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _direct(scope: Scope) -> AccountedResponse | None:
    """The server's ``tollgate.respond`` (as ``RequestContext`` passes it on), if any."""
    found: AccountedResponse | None = scope.get("extensions", {}).get(RESPOND_EXTENSION)
    return found
