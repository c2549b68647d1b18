"""One request, timed: the POST, the SSE stream read line by line, and what came back.

Times are ``time.perf_counter()`` readings. ``scheduled`` is when the request *should* have
been sent (open loop: by the arrival clock), ``sent`` when it was; open-loop latencies are
measured from ``scheduled``, so a client or server that falls behind shows up in the numbers
instead of quietly sending later (coordinated omission). Closed-loop samples (``closed``) have
no schedule to miss and count from ``sent``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

DONE = b"[DONE]"


@dataclass(slots=True)
class Sample:
    """What one request did."""

    index: int
    scheduled: float
    warmup: bool
    sent: float = 0.0
    first_token: float | None = None
    last_token: float | None = None
    end: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int | None = None
    requested_tokens: int = 0
    error: str | None = None
    closed: bool = False  # closed loop: latencies count from the send

    @property
    def origin(self) -> float:
        """Where latencies count from."""
        return self.sent if self.closed else self.scheduled

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.origin

    @property
    def latency_s(self) -> float:
        return self.end - self.origin

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: (last - first) / (tokens - 1)."""
        if self.first_token is None or self.last_token is None or self.output_tokens < 2:
            return None
        return (self.last_token - self.first_token) / (self.output_tokens - 1)


class Client:
    """Sends bench requests over one pooled aiohttp session."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        stream: bool,
        timeout_s: float,
        max_connections: int,
    ) -> None:
        self._url = url
        self._stream = stream
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._max_connections = max_connections

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, ttl_dns_cache=300, keepalive_timeout=60
        )
        # A large read buffer: one SSE line (a chunk) must fit in it.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, read_bufsize=1 << 20
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, sample: Sample, body: bytes) -> Sample:
        """Send ``body``, filling in ``sample``; never raises (errors go in ``sample.error``)."""
        assert self._session is not None, "use the client as an async context manager"
        sample.sent = time.perf_counter()
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as resp:
                if resp.status != 200:
                    sample.error = _http_error(resp.status, await resp.read())
                elif self._stream:
                    await _read_stream(resp, sample)
                else:
                    _read_json(await resp.read(), sample)
        except TimeoutError:
            sample.error = "timeout"
        except aiohttp.ClientConnectorError:
            sample.error = "connect_error"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            sample.error = "disconnected"
        except aiohttp.ClientError as exc:
            sample.error = f"client_error:{type(exc).__name__}"
        except (ValueError, orjson.JSONDecodeError):
            sample.error = "bad_response"
        except asyncio.CancelledError:
            sample.error = "cancelled"
            raise
        finally:
            sample.end = time.perf_counter()
        return sample


def _http_error(status: int, body: bytes) -> str:
    """``http_429`` or, with the OpenAI error envelope's code, ``http_429:insufficient_quota``."""
    code: Any = None
    try:
        error = orjson.loads(body).get("error")
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if isinstance(code, str) and code and len(code) <= 64 and code.isprintable():
        return f"http_{status}:{code}"
    return f"http_{status}"


async def _read_stream(resp: aiohttp.ClientResponse, sample: Sample) -> None:
    content_chunks = 0
    usage_tokens: int | None = None
    done = False
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == DONE:
            done = True
            break
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            sample.error = "stream_error"
            return
        if _has_content(chunk.get("choices")):
            now = time.perf_counter()
            if sample.first_token is None:
                sample.first_token = now
            sample.last_token = now
            content_chunks += 1
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            usage_tokens = _int(usage.get("completion_tokens"))
            sample.prompt_tokens = _int(usage.get("prompt_tokens"))
    if not done:
        sample.error = "incomplete_stream"
    # Usage is exact; without it (a server ignoring include_usage) one chunk ~ one token.
    sample.output_tokens = usage_tokens if usage_tokens is not None else content_chunks
    if sample.first_token is None and sample.error is None:
        sample.error = "no_tokens"


def _read_json(body: bytes, sample: Sample) -> None:
    answer = orjson.loads(body)
    now = time.perf_counter()
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if isinstance(usage, dict):
        sample.output_tokens = _int(usage.get("completion_tokens")) or 0
        sample.prompt_tokens = _int(usage.get("prompt_tokens"))
    # Without streaming the first token arrives with the last.
    sample.first_token = now  # no last_token: no time per output token without a stream


def _has_content(choices: Any) -> bool:
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                return True
        elif choice.get("text"):
            return True
    return False


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
