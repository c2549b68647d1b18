"""Any OpenAI-compatible HTTP API: the fast path.

One aiohttp session per provider with pooled keep-alive connections; bodies go out as bytes and
answers come back as bytes (parsed only to read ``usage``); SSE is relayed event by event as it
arrives. A provider may list several replicas (``base_urls``): the
:class:`gateway.providers.balancer.Balancer` picks one per request (fewest requests in flight,
prefix affinity by ``affinity_key``, per-replica breakers, ``max_in_flight``), and a replica that
refuses the connection is skipped for the next one before the provider gives up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.policy.schema import OpenAIProvider
from gateway.providers.balancer import Balancer
from gateway.providers.base import UpstreamReply, UpstreamRequest, Usage
from gateway.providers.sse import split_events

_JSON = "application/json"


class Replica:
    """One base URL of a provider (its load and health are kept by the balancer)."""

    __slots__ = ("base_url", "index", "name")

    def __init__(self, base_url: str, index: int) -> None:
        self.base_url = base_url
        self.index = index
        self.name = base_url.split("://", 1)[-1].split("/", 1)[0]


class OpenAIStream:
    """An open upstream SSE response. Closing it closes the connection, stopping generation."""

    def __init__(
        self, response: aiohttp.ClientResponse, replica: Replica, balancer: Balancer
    ) -> None:
        self._response = response
        self._replica = replica
        self._balancer = balancer
        self.replica = replica.name
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            async for event in split_events(self._response.content.iter_any()):
                yield event
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._balancer.failure(self._replica.index)
            raise UpstreamProtocolError(
                f"upstream stream from {self.replica} broke: {type(exc).__name__}"
            ) from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._balancer.release(self._replica.index)
        # close(), not release(): a stream cut short must not return a half-read connection to
        # the pool, and closing the socket is what tells the upstream to stop generating.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class OpenAIUpstream:
    """The :class:`gateway.providers.base.Upstream` for ``type: openai`` providers."""

    def __init__(self, name: str, spec: OpenAIProvider) -> None:
        self.name = name
        self.spec = spec
        self._replicas = [Replica(url, index) for index, url in enumerate(spec.base_urls)]
        self.balancer = Balancer(
            [replica.name for replica in self._replicas], max_in_flight=spec.max_in_flight
        )
        self._headers = {"content-type": _JSON, **spec.headers}
        if spec.api_key and spec.api_key != "none":
            self._headers["authorization"] = f"Bearer {spec.api_key}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Built on first use, inside the running loop (aiohttp sessions belong to one loop).
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.spec.max_connections,
                limit_per_host=self.spec.max_connections,
                keepalive_timeout=30,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _post(
        self, request: UpstreamRequest, *, stream: bool
    ) -> tuple[aiohttp.ClientResponse, Replica]:
        payload = orjson.dumps(request.body)
        headers = {**self._headers, "x-request-id": request.request_id}
        if stream:
            # Time to first byte and every gap between events are bounded, not the whole
            # generation, which may legitimately run longer than the route's timeout.
            timeout = aiohttp.ClientTimeout(
                sock_connect=self.spec.connect_timeout_s, sock_read=request.timeout_s
            )
        else:
            timeout = aiohttp.ClientTimeout(
                total=request.timeout_s, sock_connect=self.spec.connect_timeout_s
            )
        balancer = self.balancer
        last_error: UpstreamError | None = None
        tried: set[int] = set()
        while (index := await balancer.acquire(request.affinity_key, tried)) is not None:
            replica = self._replicas[index]
            url = f"{replica.base_url}/{request.endpoint.value}"
            try:
                response = await self._client().post(
                    url, data=payload, headers=headers, timeout=timeout
                )
            except aiohttp.ClientConnectorError:
                self._failed(index)
                tried.add(index)
                last_error = UpstreamConnectError(
                    f"could not connect to upstream {self.name} ({replica.name})"
                )
                continue
            except TimeoutError:
                self._failed(index)
                raise UpstreamTimeout(
                    f"upstream {self.name} ({replica.name}) timed out after {request.timeout_s:g}s"
                ) from None
            except aiohttp.ClientError as exc:
                self._failed(index)
                raise UpstreamProtocolError(
                    f"upstream {self.name} ({replica.name}) failed: {type(exc).__name__}"
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
        except TimeoutError:
            self.balancer.failure(replica.index)
            raise UpstreamTimeout(
                f"upstream {self.name} ({replica.name}) timed out after {request.timeout_s:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            self.balancer.failure(replica.index)
            raise UpstreamProtocolError(
                f"upstream {self.name} ({replica.name}) failed mid-answer: {type(exc).__name__}"
            ) from None
        finally:
            self.balancer.release(replica.index)
            response.release()
        return self._reply(response, body, replica)

    async def open_stream(self, request: UpstreamRequest) -> OpenAIStream | UpstreamReply:
        response, replica = await self._post(request, stream=True)
        content_type = response.headers.get("content-type", "")
        if response.status == 200 and content_type.startswith("text/event-stream"):
            self.balancer.success(replica.index)
            return OpenAIStream(response, replica, self.balancer)
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.balancer.failure(replica.index)
            raise UpstreamProtocolError(
                f"upstream {self.name} ({replica.name}) failed: {type(exc).__name__}"
            ) from None
        finally:
            self.balancer.release(replica.index)
            response.release()
        if response.status == 200:
            self.balancer.failure(replica.index)
            raise UpstreamProtocolError(
                f"upstream {self.name} ({replica.name}) answered a stream request with "
                f"{content_type or 'no content type'} instead of text/event-stream"
            )
        return self._reply(response, body, replica)

    def _reply(
        self, response: aiohttp.ClientResponse, body: bytes, replica: Replica
    ) -> UpstreamReply:
        status = response.status
        where = f"upstream {self.name} ({replica.name})"
        if status == 429 or status >= 500:
            retry_after = _retry_after(response.headers.get("retry-after"))
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
        content_type = response.headers.get("content-type", _JSON)
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
        if self._session is not None:
            await self._session.close()
            self._session = None


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
