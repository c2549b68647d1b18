"""Any OpenAI-compatible HTTP API: the fast path.

Requests go over :mod:`gateway.providers.http1_pool` (our own HTTP/1.1 client on asyncio and
httptools, about half the cost per request of aiohttp): one keep-alive pool per replica, the
request line and static headers encoded once per endpoint, bodies out as bytes and answers back
as bytes (parsed only to read ``usage``); SSE is relayed event by event as it arrives. A provider
may list several replicas (``base_urls``): the :class:`gateway.providers.balancer.Balancer` picks
one per request (fewest requests in flight, prefix affinity by ``affinity_key``, per-replica
breakers, ``max_in_flight``), and a replica that refuses the connection is skipped for the next
one before the provider gives up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.policy.schema import OpenAIProvider
from gateway.providers.balancer import Balancer
from gateway.providers.base import Endpoint, UpstreamReply, UpstreamRequest, Usage
from gateway.providers.http1_errors import ConnectError, HTTPError, HTTPTimeout
from gateway.providers.http1_pool import ConnectionPool, Origin, request_head
from gateway.providers.http1_response import Response
from gateway.providers.sse import is_done, split_events

_JSON = "application/json"
# After [DONE], how long a stream's connection may wait for the last bytes of the HTTP message
# (the final chunk) to be reused, before it is closed instead.
_LINGER_S = 1.0


class Replica:
    """One base URL of a provider: its connection pool and pre-encoded request heads.

    (Its load and health are kept by the balancer.)
    """

    __slots__ = ("base_url", "heads", "index", "name", "pool")

    def __init__(
        self, base_url: str, index: int, spec: OpenAIProvider, headers: dict[str, str]
    ) -> None:
        origin = Origin.parse(base_url)
        self.base_url = base_url
        self.index = index
        self.name = base_url.split("://", 1)[-1].split("/", 1)[0]
        self.pool = ConnectionPool(
            origin,
            max_connections=spec.max_connections,
            connect_timeout_s=spec.connect_timeout_s,
        )
        self.heads = {
            endpoint: request_head(origin, "POST", f"{origin.path}/{endpoint.value}", headers)
            for endpoint in Endpoint
        }


class OpenAIStream:
    """An open upstream SSE response. Closing it closes the connection, stopping generation."""

    def __init__(self, response: Response, replica: Replica, balancer: Balancer) -> None:
        self._response = response
        self._replica = replica
        self._balancer = balancer
        self.replica = replica.name
        self._closed = False
        self._ended = False  # the upstream sent [DONE]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            async for event in split_events(self._response):
                if is_done(event):
                    self._ended = True
                yield event
        except HTTPError as exc:
            self._balancer.failure(self._replica.index)
            raise UpstreamProtocolError(
                f"upstream stream from {self.replica} broke: {exc}"
            ) from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._balancer.release(self._replica.index)
        if self._ended:
            # Generation is over: the connection may wait a moment for its last bytes and
            # be reused, rather than paying for a new one.
            self._response.close_after_end(_LINGER_S)
        else:
            # A stream cut short closes its socket: that is what tells the upstream to stop
            # generating (a half-read connection never goes back to the pool).
            self._response.close()


class OpenAIUpstream:
    """The :class:`gateway.providers.base.Upstream` for ``type: openai`` providers."""

    def __init__(self, name: str, spec: OpenAIProvider) -> None:
        self.name = name
        self.spec = spec
        # identity: answers are forwarded byte for byte, and compressing costs both sides CPU.
        headers = {"content-type": _JSON, "accept-encoding": "identity"}
        headers.update((key.lower(), value) for key, value in spec.headers.items())
        if spec.api_key and spec.api_key != "none":
            headers["authorization"] = f"Bearer {spec.api_key}"
        headers.pop("x-request-id", None)  # set per request
        self._replicas = [
            Replica(url, index, spec, headers) for index, url in enumerate(spec.base_urls)
        ]
        self.balancer = Balancer(
            [replica.name for replica in self._replicas], max_in_flight=spec.max_in_flight
        )

    async def _post(self, request: UpstreamRequest, *, stream: bool) -> tuple[Response, Replica]:
        """The response head from the first replica that accepts the connection.

        With ``stream``, the route's timeout bounds the time to the first byte and every gap
        between events, not the whole generation, which may legitimately run longer; without
        it, it bounds the whole exchange.
        """
        payload = orjson.dumps(request.body)
        extra = b"x-request-id: %s\r\n" % request.request_id.encode()
        balancer = self.balancer
        last_error: UpstreamError | None = None
        tried: set[int] = set()
        while (index := await balancer.acquire(request.affinity_key, tried)) is not None:
            replica = self._replicas[index]
            try:
                response = await replica.pool.request(
                    replica.heads[request.endpoint],
                    payload,
                    extra=extra,
                    stream=stream,
                    timeout_s=request.timeout_s,
                )
            except ConnectError:
                self._failed(index)
                tried.add(index)
                last_error = UpstreamConnectError(
                    f"could not connect to upstream {self.name} ({replica.name})"
                )
                continue
            except HTTPTimeout as exc:
                self._failed(index)
                raise UpstreamTimeout(
                    f"upstream {self.name} ({replica.name}) timed out: {exc}"
                ) from None
            except HTTPError as exc:
                self._failed(index)
                raise UpstreamProtocolError(
                    f"upstream {self.name} ({replica.name}) failed: {exc}"
                ) from None
            except BaseException:
                balancer.release(index)
                raise
            return response, replica
        assert last_error is not None
        raise last_error

    def _failed(self, index: int) -> None:
        self.balancer.release(index)
        self.balancer.failure(index)

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        response, replica = await self._post(request, stream=False)
        try:
            body = await response.read()
        except HTTPTimeout as exc:
            self.balancer.failure(replica.index)
            raise UpstreamTimeout(
                f"upstream {self.name} ({replica.name}) timed out: {exc}"
            ) from None
        except HTTPError as exc:
            self.balancer.failure(replica.index)
            raise UpstreamProtocolError(
                f"upstream {self.name} ({replica.name}) failed mid-answer: {exc}"
            ) from None
        finally:
            self.balancer.release(replica.index)
        return self._reply(response, body, replica)

    async def open_stream(self, request: UpstreamRequest) -> OpenAIStream | UpstreamReply:
        response, replica = await self._post(request, stream=True)
        content_type = response.header(b"content-type") or ""
        if response.status == 200 and content_type.startswith("text/event-stream"):
            self.balancer.success(replica.index)
            return OpenAIStream(response, replica, self.balancer)
        try:
            body = await response.read()
        except HTTPError as exc:
            self.balancer.failure(replica.index)
            raise UpstreamProtocolError(
                f"upstream {self.name} ({replica.name}) failed: {exc}"
            ) from None
        finally:
            self.balancer.release(replica.index)
        if response.status == 200:
            self.balancer.failure(replica.index)
            raise UpstreamProtocolError(
                f"upstream {self.name} ({replica.name}) answered a stream request with "
                f"{content_type or 'no content type'} instead of text/event-stream"
            )
        return self._reply(response, body, replica)

    def _reply(self, response: Response, body: bytes, replica: Replica) -> UpstreamReply:
        status = response.status
        where = f"upstream {self.name} ({replica.name})"
        if status == 429 or status >= 500:
            retry_after = _retry_after(response.header(b"retry-after"))
            # A 429 cools the replica down for its Retry-After; a 5xx counts toward its breaker.
            self.balancer.failure(
                replica.index, retry_after_s=retry_after if status == 429 else None
            )
            raise UpstreamError(
                f"{where} returned {status}: {_error_message(body)}",
                status=429 if status == 429 else 502,
                retry_after_s=retry_after,
                code="upstream_rate_limited" if status == 429 else None,
            )
        content_type = response.header(b"content-type") or _JSON
        usage: Usage | None = None
        if 200 <= status < 300:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.balancer.failure(replica.index)
                raise UpstreamProtocolError(f"{where} returned invalid JSON") from None
            if not isinstance(parsed, dict):
                self.balancer.failure(replica.index)
                raise UpstreamProtocolError(f"{where} returned JSON that is not an object")
            usage = Usage.from_openai(parsed.get("usage"))
        # A client error (4xx) is the client's: the replica itself answered properly.
        self.balancer.success(replica.index)
        return UpstreamReply(status, body, content_type, replica.name, usage)

    async def aclose(self) -> None:
        for replica in self._replicas:
            await replica.pool.aclose()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_message(body: bytes) -> str:
    """The upstream's own error message, kept for the client (bounded, single line)."""
    message: Any = None
    try:
        parsed = orjson.loads(body)
        if isinstance(parsed, dict):
            error = parsed.get("error")
            message = error.get("message") if isinstance(error, dict) else error
    except orjson.JSONDecodeError:
        pass
    if not isinstance(message, str) or not message:
        message = body[:200].decode("utf-8", "replace") or "(empty body)"
    return " ".join(message.split())[:500]
