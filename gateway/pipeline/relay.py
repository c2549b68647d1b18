"""Relaying an upstream SSE stream: event by event, never buffered, accounted for at its end.

Before the final ``[DONE]`` reaches the client the request is accounted for: what was generated
is known and the ledger row is written. The budget's settle and the answer's cache entry (when it
completed normally) follow in a task of their own, once the answer has left. A stream the upstream
cuts off ends with an error event; a client that leaves is charged for what was generated, not for
``max_tokens``.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson

from gateway.budget import Charge
from gateway.cache import CachePlan, PendingWrite, PromptCache
from gateway.cache.assemble import StreamAssembler
from gateway.errors import UpstreamError, UpstreamProtocolError
from gateway.metrics import Metrics
from gateway.pipeline.accounting import Hold
from gateway.pipeline.attempts import Attempt
from gateway.pipeline.background import Background
from gateway.pipeline.closing import settle_and_write
from gateway.pipeline.prompt_count import PromptCount
from gateway.pricing import Price
from gateway.providers.base import UpstreamStream, Usage
from gateway.providers.sse import is_done
from gateway.record import RequestRecord
from gateway.tokens import TokenCounter

_USAGE_NULL = (b'"usage":null', b'"usage": null')
# A delta that carries text, and one whose text is empty (one regex search each, in C).
_CONTENT = re.compile(rb'"(?:content|text)": ?"')
_EMPTY_CONTENT = re.compile(rb'"(?:content|text)": ?""')


class StreamRelay:
    """One stream from one upstream to one client."""

    def __init__(
        self,
        stream: UpstreamStream,
        record: RequestRecord,
        *,
        hold: Hold,
        price: Price,
        model: str,
        client_wants_usage: bool,
        cache: PromptCache,
        cache_plan: CachePlan | None,
        prompt: PromptCount,
        tokens: TokenCounter,
        finish: Callable[[RequestRecord], None],
        background: Background,
        metrics: Metrics,
        attempt: Attempt,
        upstream_s: float,
        timeout_s: float,
    ) -> None:
        self._stream = stream
        self._record = record
        self._hold = hold
        self._price = price
        self._model = model
        self._client_wants_usage = client_wants_usage
        self._cache = cache
        self._cache_plan = cache_plan
        self._prompt = prompt
        self._assembler = cache.assembler(cache_plan) if cache_plan is not None else None
        self._tokens = tokens
        self._finish = finish
        self._background = background
        self._metrics = metrics
        self._attempt = attempt
        self._upstream_s = upstream_s  # waiting on upstreams before this stream opened
        self._opened = time.perf_counter()
        self._timeout_s = timeout_s
        # A stream may outlive its hold (which expires timeout_s after it was made): renew the
        # hold every half of that while the stream runs.
        self._renew_at = self._opened + timeout_s / 2
        self._usage: Usage | None = None
        self._content_chunks = 0
        # Set when the upstream shows it will not report usage: then the text is counted.
        self._texts: list[str] | None = None
        self._owed: list[bytes] = []  # events sent whose bookkeeping is still to do
        self._kept = False  # the settle's task makes the cache entry and ends the flight
        self._catching_up = False  # a call of _catch_up is queued

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        record = self._record
        finished = False
        loop = asyncio.get_running_loop()
        try:
            async for event in self._stream:
                if record.ttft_ms is None:
                    now = time.perf_counter()
                    record.ttft_ms = (now - record.started) * 1000
                    waited_s = self._upstream_s + now - self._opened
                    record.overhead_ms = record.ttft_ms - waited_s * 1000
                    self._attempt.first_byte()
                    if b'"usage"' not in event:
                        self._texts = []
                if is_done(event):
                    # The events sent with it whose bookkeeping is still to do, taken from the
                    # queue: the catch-up queued behind their write then finds nothing to do.
                    tail, self._owed = self._owed, []
                    if tail:
                        try:
                            # They leave first (their write is queued): one turn of the loop,
                            # instead of holding them back for the accounting below.
                            await asyncio.sleep(0)
                        except BaseException:
                            self._owed[:0] = tail  # the client left: paid for on the way out
                            raise
                    finished = True
                    if self._usage is None:
                        # What was generated is counted from what was sent.
                        for sent in tail:
                            self._track(sent)
                        tail = []
                    tail.append(event)
                    # The rest of their bookkeeping (the cache's assembly of the answer) waits
                    # until the answer has left, in the settle's task.
                    self._complete(tail)
                    self._attempt.succeeded(record.completion_tokens)
                    # Accounted for before the client sees the end of its answer.
                    self._finish(record)
                    yield event
                    return
                # Each event's bookkeeping (the cache's assembly, the text kept for counting)
                # waits until the server has written it: the client's bytes do not wait for a
                # JSON parse. Listed first, so a client leaving at the yield still pays for it.
                self._owed.append(event)
                if b'"usage"' in event and not any(n in event for n in _USAGE_NULL):
                    event = self._take_usage(event)  # it may be dropped or rewritten
                if event:
                    if time.perf_counter() >= self._renew_at:
                        self._renew_at = time.perf_counter() + self._timeout_s / 2
                        self._background.spawn(self._hold.refresh(self._timeout_s))
                    yield event
                if not self._catching_up:
                    # Queued behind the server's write of what was just sent (it queued that
                    # write as the event was sent), and done for every event listed by then.
                    self._catching_up = True
                    loop.call_soon(self._catch_up)
            raise UpstreamProtocolError(
                f"upstream {record.provider} ({record.replica}) ended the stream early"
            )
        except UpstreamError as exc:
            self._catch_up()
            record.status, record.error_type = "upstream_error", exc.code
            record.http_status = exc.status
            self._metrics.upstream_error(record.deployment, exc.code)
            self._attempt.failed(exc)
            await self._charge_generated()
            record.total_ms = (time.perf_counter() - record.started) * 1000
            self._finish(record)
            yield b"data: " + exc.body() + b"\n\n"
        except BaseException:
            # The client went away (the response task was cancelled): stop generation now, and
            # settle in a task of its own, since every await here would be cancelled too.
            self._catch_up()  # what was generated (and sent) is paid for
            if not finished:
                record.status, record.error_type = "client_disconnect", "client_disconnect"
                self._background.spawn(self._charge_generated())
                self._attempt.succeeded(record.completion_tokens, complete=False)
            raise
        finally:
            await self._stream.aclose()
            if self._cache_plan is not None and not self._kept:
                self._cache.abandon(self._cache_plan)
            if record.total_ms is None:
                record.total_ms = (time.perf_counter() - record.started) * 1000
            self._finish(record)

    def _take_usage(self, event: bytes) -> bytes:
        """Read the usage chunk; drop it if the client did not ask, else add the real cost."""
        try:
            chunk: Any = orjson.loads(event[event.index(b"{") :])
        except (ValueError, orjson.JSONDecodeError):
            return event
        if not isinstance(chunk, dict):
            return event
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        if not chunk.get("choices"):
            if not self._client_wants_usage:
                return b""
            if usage is not None:
                nanos = self._price.cost_nanos(
                    usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
                )
                chunk["usage"]["cost_usd"] = Charge(0, nanos).usd
                return b"data: " + orjson.dumps(chunk) + b"\n\n"
        return event

    def _catch_up(self) -> None:
        """The bookkeeping of every event sent so far, in order."""
        self._catching_up = False
        owed, self._owed = self._owed, []
        for event in owed:
            self._track(event)

    def _track(self, event: bytes) -> None:
        """One event's bookkeeping: the cache's assembly of the answer, and what was generated,
        for a stream that ends without usage (the assembler's parse is reused when it made one).
        """
        parsed = self._assembler.feed(event) if self._assembler is not None else None
        if _CONTENT.search(event) and not _EMPTY_CONTENT.search(event):
            self._content_chunks += 1
            if self._texts is not None:
                self._texts.append(_text_of(event) if parsed is None else _chunk_text(parsed))

    def _completion_tokens(self) -> int:
        if self._usage is not None:
            return self._usage.completion_tokens
        if self._texts is not None:
            return self._tokens.count_text("".join(self._texts), self._model)
        # OpenAI and vLLM stream one token per chunk: the count of chunks is what was generated.
        return self._content_chunks

    def _actual(self) -> Charge:
        record = self._record
        usage = self._usage
        # Without usage from upstream, the prompt is what we counted (exactly: a bound is
        # counted now, on this rare path).
        prompt = usage.prompt_tokens if usage is not None else self._prompt.exactly()
        cached = usage.cached_tokens if usage is not None else 0
        completion = self._completion_tokens()
        record.prompt_tokens, record.completion_tokens = prompt, completion
        record.cached_tokens = cached
        charge = Charge(prompt + completion, self._price.cost_nanos(prompt, completion, cached))
        # The ledger records exactly what the budget was charged (nano-dollars, rounded up).
        record.cost_usd = charge.usd
        return charge

    def _complete(self, tail: list[bytes]) -> None:
        """Account for a stream that ended normally; ``tail``: its last events, [DONE]
        included, whose bookkeeping is still to do."""
        actual = self._actual()
        keep = None
        if self._cache_plan is not None and self._assembler is not None:
            keep = functools.partial(self._keep, self._cache_plan, self._assembler, tail)
            self._kept = True  # the flight is the settle task's to end now
        # Off the stream's critical path, like the JSON path (the hold is never too small).
        self._background.spawn(settle_and_write(self._hold, self._cache, actual, None, keep=keep))
        self._record.total_ms = (time.perf_counter() - self._record.started) * 1000

    def _keep(
        self, plan: CachePlan, assembler: StreamAssembler, tail: list[bytes]
    ) -> PendingWrite | None:
        """The answer's cache entry, made once the answer has left (in the settle's task) and
        handed to the cache, which ends the flight of identical requests waiting on it."""
        record = self._record
        try:
            for event in tail:
                assembler.feed(event)
            entry = PromptCache.entry_from_stream(
                plan,
                assembler,
                deployment=record.deployment or "",
                cost_usd=record.cost_usd,
                usage=(record.prompt_tokens, record.completion_tokens, record.cached_tokens),
            )
        except BaseException:
            self._cache.abandon(plan)  # the requests waiting on this one go ahead alone
            raise
        return self._cache.finish(plan, entry)

    def _charge_generated(self) -> Coroutine[Any, Any, object]:
        """A stream that ended badly pays for what it generated; nothing generated, nothing.

        The record is final as soon as this returns (the ledger row is written from it); the
        returned coroutine only talks to the budget store.
        """
        actual = self._actual()
        if self._record.completion_tokens == 0 and self._usage is None:
            return self._hold.release()
        return self._hold.settle(actual)


def _text_of(event: bytes) -> str:
    try:
        chunk: Any = orjson.loads(event[event.index(b"{") :])
    except (ValueError, orjson.JSONDecodeError):
        return ""
    return _chunk_text(chunk)


def _chunk_text(chunk: Any) -> str:
    try:
        choice = chunk["choices"][0]
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return text if isinstance(text, str) else ""
