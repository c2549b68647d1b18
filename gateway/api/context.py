"""The outermost ASGI layer: request ids, the request record, and the access log.

Raw ASGI rather than framework middleware, because it runs on every request and must cost
microseconds: it names the request (honouring a sane client ``x-request-id``), stamps that id on
every response, and writes one JSON access-log line when the response has been sent, streams
included.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError
from gateway.ids import unique_ids
from gateway.logs import AccessLog
from gateway.record import RequestRecord

log = logging.getLogger("tollgate")
_MAX_ID = 128
# The ASGI extension `tollgate serve`'s protocol offers (gateway.cli.http_protocol): the
# time.perf_counter() at which the request's first byte was read. A request's clock starts there,
# so its timings (the access log's ttft_ms, total_ms and overhead_ms, the ledger's, routing's
# goodput) include the server's parsing of the request and the wait for its task to start, as a
# client sees them: on a cold process those took 100-200 µs before this layer was reached.
ARRIVED_EXTENSION = "tollgate.arrived"
# The ASGI extension `tollgate serve`'s protocol offers (gateway.cli.http_protocol): a response
# written directly, not through `send` (a DirectResponse: whole, start, chunk, end; heads as
# encoded header lines, each ending in CRLF, with no content-length, transfer-encoding or
# connection, which the server adds). A call that returns False did nothing: the response must go
# through `send` instead. This layer replaces it, for the app inside, with an AccountedResponse.
RESPOND_EXTENSION = "tollgate.respond"
# What a header value may not hold (uvicorn's rule): control characters other than tab.
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_lines(headers: Mapping[str, str]) -> str:
    """A ``name: value`` line (ending in CRLF) per header, for ``tollgate.respond``. The names
    are the caller's own (lower case, valid); the values are checked, all in one search, since a
    line break in one would end the head early or add a header. A bad value raises ValueError."""
    values = "".join(headers.values())
    if _UNSAFE_VALUE.search(values) is not None:
        raise ValueError("invalid HTTP header value")
    lines = "\r\n".join(map(": ".join, headers.items()))  # no Python loop: C all the way
    return lines + "\r\n" if lines else ""


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= _MAX_ID and text.isascii() and text.isprintable():
                return text
            break
    return None


class DirectResponse(Protocol):
    """What ``tollgate serve``'s protocol offers under :data:`RESPOND_EXTENSION`."""

    def whole(self, status: int, head: bytes, body: bytes) -> bool: ...
    def start(self, status: int, head: bytes) -> bool: ...
    def chunk(self, data: bytes) -> bool: ...
    def end(self) -> bool: ...


class AccountedResponse:
    """:data:`RESPOND_EXTENSION` as the app inside :class:`RequestContext` sees it: heads as
    text (:func:`header_lines`), stamped with the request id, and the request accounted for
    before its last byte leaves, as the ``send`` path does. A False means: use ``send``."""

    __slots__ = ("_direct", "_finish", "_ids", "_record", "chunk")

    def __init__(
        self,
        direct: DirectResponse,
        record: RequestRecord,
        finish: Callable[[RequestRecord], None],
        id_lines: str,
    ) -> None:
        self._direct = direct
        self._record = record
        self._finish = finish
        self._ids = id_lines
        self.chunk: Callable[[bytes], bool] = direct.chunk  # nothing to add per chunk

    def whole(self, status: int, head: str, body: bytes) -> bool:
        self._record.http_status = status
        self._finished()
        return self._direct.whole(status, (head + self._ids).encode("latin-1"), body)

    def start(self, status: int, head: str) -> bool:
        self._record.http_status = status
        return self._direct.start(status, (head + self._ids).encode("latin-1"))

    def end(self) -> bool:
        self._finished()
        return self._direct.end()

    def _finished(self) -> None:
        record = self._record
        if record.total_ms is None:
            record.total_ms = (time.perf_counter() - record.started) * 1000
        self._finish(record)  # idempotent: the send path and the end of the request call it too


class RequestContext:
    """Gives every HTTP request a :class:`RequestRecord` in ``scope["state"]["record"]``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: AccessLog | None = None,
        finish: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        # Accounts for the request (ledger, metrics) before its last byte is sent, so a client
        # that got its whole response is always accounted for, even if the process dies next.
        self.finish = finish or (lambda record: None)
        self._ids = unique_ids("req_", digits=8)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Budgets and the ledger are keyed by a request id, so it must be unique: a client's own
        # id is echoed back as x-request-id (and kept in the ledger), but a client reusing its
        # ids must not get a second request for free, so the gateway always names it too.
        arrived = scope.get("extensions", {}).get(ARRIVED_EXTENSION)
        started = arrived if isinstance(arrived, float) else time.perf_counter()
        request_id = next(self._ids)
        client_id = _client_request_id(scope)
        record = RequestRecord(request_id, started, client_id, scope["method"], scope["path"])
        scope.setdefault("state", {})["record"] = record
        id_headers = [(b"x-request-id", (client_id or request_id).encode())]
        if client_id is not None:
            id_headers.append((b"x-tollgate-request-id", request_id.encode()))

        finish = self.finish
        extensions: dict[str, Any] = scope.get("extensions") or {}
        direct: DirectResponse | None = extensions.get(RESPOND_EXTENSION)
        if direct is not None:
            id_lines = "".join([f"{k.decode()}: {v.decode()}\r\n" for k, v in id_headers])
            extensions[RESPOND_EXTENSION] = AccountedResponse(direct, record, finish, id_lines)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.http_status = message["status"]
                message["headers"] = [*message.get("headers", ()), *id_headers]
            elif not message.get("more_body", False):
                if record.total_ms is None:
                    record.total_ms = (time.perf_counter() - record.started) * 1000
                finish(record)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Only the class and message are logged (a trace could carry request data); the
            # client gets the OpenAI envelope and the request id to quote.
            record.status, record.error_type = "error", "internal_error"
            log.error(
                "unexpected error",
                extra={"fields": {"request_id": request_id, "error": _describe(exc)}},
            )
            if record.http_status == 0:
                error = GatewayError(
                    f"The gateway failed to handle this request (request id {request_id})."
                )
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": error.status,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": error.body()})
        finally:
            if record.total_ms is None:
                record.total_ms = (time.perf_counter() - record.started) * 1000
            finish(record)
            if self.access_log is not None:
                self.access_log.write(_log_fields(record))


def _log_fields(record: RequestRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "client_request_id": record.client_request_id,
        "method": record.method,
        "path": record.path,
        "http_status": record.http_status,
        "status": record.status if record.http_status < 400 or record.status != "ok" else "error",
        "error_type": record.error_type,
        "team": record.team,
        "key_id": record.key_id,
        "route": record.route,
        "deployment": record.deployment,
        "replica": record.replica,
        "attempts": record.attempts,
        "stream": record.stream,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 2),
        # The part of the TTFT the gateway spent itself (not waiting on upstreams).
        "overhead_ms": None if record.overhead_ms is None else round(record.overhead_ms, 3),
        "total_ms": round(record.total_ms or 0.0, 2),
    }


def _describe(exc: BaseException) -> str:
    """``Type: message`` plus where it was raised (file:line), never the whole trace."""
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f" at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"
    return f"{type(exc).__name__}: {exc}"[:300] + where
