"""The stream relay gives the client each event before doing its bookkeeping, and still pays for
an event whose bookkeeping the client's departure cut short."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from gateway.budget import build_plan
from gateway.budget.memory_limiter import MemoryLimiter
from gateway.cache import CachePlan, PromptCache
from gateway.cache.store import MemoryCacheStore
from gateway.metrics import Metrics
from gateway.pipeline.accounting import Hold
from gateway.pipeline.attempts import Attempt
from gateway.pipeline.background import Background
from gateway.pipeline.prompt_count import PromptCount
from gateway.pipeline.relay import StreamRelay
from gateway.policy.schema import Defaults
from gateway.pricing import Price
from gateway.record import RequestRecord
from gateway.routing import Breakers, RoutingStats
from gateway.routing.plan import RoutePlan
from gateway.tokens import TokenCounter
from tests.support.cache_upstream import document

MODEL = "gpt-4o"
# An upstream that reports no usage: what was generated is counted from the text relayed.
EVENTS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":" there,"},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":" friend"},"finish_reason":null}]}\n\n',
]


class Upstream:
    """An open upstream stream that gives the events it was made with."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event

    async def aclose(self) -> None:
        self.closed = True


def _relay(
    background: Background,
    events: list[bytes] = EVENTS,
    cache: PromptCache | None = None,
    cache_plan: CachePlan | None = None,
) -> tuple[StreamRelay, RequestRecord]:
    record = RequestRecord("req_relay", time.perf_counter(), route="chat", stream=True)
    plan = RoutePlan(
        route="chat",
        strategy="cheapest",
        attempts=(),
        ttft_target_s=None,
        total_target_s=None,
        percentile=0.9,
        predicted_miss=False,
        probe=False,
    )
    relay = StreamRelay(
        Upstream(events),  # type: ignore[arg-type]
        record,
        hold=Hold(MemoryLimiter(), build_plan("t", None, Defaults()), record),
        price=Price.per_mtok(1.0, 2.0, "explicit"),
        model=MODEL,
        client_wants_usage=False,
        cache=cache or PromptCache(MemoryCacheStore(), "test:"),
        cache_plan=cache_plan,
        prompt=PromptCount(10, True, lambda: 10),
        tokens=TokenCounter(),
        finish=lambda record: None,
        background=background,
        metrics=Metrics(),
        attempt=Attempt(RoutingStats(), Breakers(), plan, record, "dep"),
        upstream_s=0.0,
        timeout_s=60.0,
    )
    return relay, record


# The end of an answer from an upstream that reports usage (the gateway asks every upstream to).
STOP = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3}}\n\n'
DONE = b"data: [DONE]\n\n"


def _tokens(*texts: str) -> int:
    return TokenCounter().count_text("".join(texts), MODEL)


def test_an_event_is_accounted_for_after_the_loop_turn_that_writes_it() -> None:
    """The server queues an event's write when it is sent; the relay queues the event's
    bookkeeping behind it, for the whole batch sent in that turn of the loop."""

    async def main() -> None:
        background = Background()
        relay, _ = _relay(background)
        events = cast(AsyncGenerator[bytes, None], relay.__aiter__())
        written: list[int] = []
        loop = asyncio.get_running_loop()
        assert await events.__anext__() == EVENTS[0]
        loop.call_soon(lambda: written.append(relay._content_chunks))  # the server's write
        assert await events.__anext__() == EVENTS[1]
        # Handing on the second event did not account for the first: no parse on the way out.
        assert relay._content_chunks == 0
        await asyncio.sleep(0)
        assert written == [0]  # the write went first
        assert relay._content_chunks == 2  # then both, in one go
        await events.aclose()
        await background.drain()

    asyncio.run(main())


def test_a_client_that_leaves_pays_for_the_last_event_it_was_given() -> None:
    """The client leaves while the second event is being sent (the relay's generator is closed
    at that yield): its bookkeeping is done on the way out, so it is charged."""

    async def main() -> None:
        background = Background()
        relay, record = _relay(background)
        events = cast(AsyncGenerator[bytes, None], relay.__aiter__())
        await events.__anext__()
        await events.__anext__()
        await events.aclose()
        await background.drain()
        assert record.status == "client_disconnect"
        assert record.completion_tokens == _tokens("Hello", " there,")

    asyncio.run(main())


def test_events_that_arrived_with_the_end_leave_before_the_accounting() -> None:
    """A fast upstream's whole answer comes in one read: its events are written before the
    relay accounts for the answer (which it must do before the client sees [DONE])."""

    async def main() -> None:
        background = Background()
        relay, record = _relay(background, [*EVENTS, b"data: [DONE]\n\n"])
        events = cast(AsyncGenerator[bytes, None], relay.__aiter__())
        accounted_at_write: list[float | None] = []
        assert await events.__anext__() == EVENTS[0]
        # The server's write of what was sent in this turn of the loop, queued by the first send.
        asyncio.get_running_loop().call_soon(lambda: accounted_at_write.append(record.total_ms))
        assert [await events.__anext__() for _ in EVENTS[1:]] == EVENTS[1:]
        assert await events.__anext__() == b"data: [DONE]\n\n"
        assert accounted_at_write == [None]  # written first
        assert record.total_ms is not None  # accounted for before [DONE] was handed on
        assert record.completion_tokens == _tokens("Hello", " there,", " friend")
        await background.drain()

    asyncio.run(main())


def test_the_answers_cache_entry_is_made_once_done_has_left() -> None:
    """Everything [DONE] must wait for is done before it (what was generated, the ledger row);
    the answer's cache entry is made in the settle's task, once the answer has left. Until
    then identical requests wait on its flight, and then they get it."""

    async def main() -> None:
        background = Background()
        cache = PromptCache(MemoryCacheStore(), "test:")
        message = {"role": "user", "content": "hi"}
        body = {"model": "chat", "messages": [message], "temperature": 0}  # a cacheable one
        plan = cache.plan(document(), "chat", "chat/completions", body, {}, "t")
        assert plan is not None
        assert await cache.lookup(plan) is None  # a miss: this request leads the flight
        relay, record = _relay(background, [*EVENTS, STOP, USAGE, DONE], cache, plan)
        events = cast(AsyncGenerator[bytes, None], relay.__aiter__())
        sent = [await events.__anext__() for _ in range(len(EVENTS) + 2)]
        assert sent == [*EVENTS, STOP, DONE]  # the usage chunk is not the client's: not asked
        # [DONE] is handed on: the request is accounted for, the entry not made yet.
        assert record.total_ms is not None and record.completion_tokens == 3
        assert len(cache.flight) == 1
        await background.drain()
        assert len(cache.flight) == 0
        again = cache.plan(document(), "chat", "chat/completions", body, {}, "t")
        assert again is not None
        hit = await cache.lookup(again)
        assert hit is not None and hit.completion_tokens == 3
        assert b"Hello there, friend" in cache.replay_json(hit)
        await events.aclose()

    asyncio.run(main())


def test_a_client_that_leaves_as_the_stream_ends_pays_for_what_came_with_the_end() -> None:
    """The last events and [DONE] come in one read; the client leaves during the turn of the
    loop that writes those events, before [DONE] is accounted for: they are still paid for."""

    async def main() -> None:
        background = Background()
        relay, record = _relay(background, [*EVENTS, DONE])
        events = cast(AsyncGenerator[bytes, None], relay.__aiter__())

        async def server() -> list[bytes]:
            # Sends each event as it comes: all four in one turn of the loop.
            return [await events.__anext__() for _ in range(len(EVENTS) + 1)]

        ending = asyncio.ensure_future(server())
        await asyncio.sleep(0)  # the relay is now in the turn of the loop that writes them
        assert not ending.done()
        ending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ending
        await background.drain()
        assert record.status == "client_disconnect"
        assert record.completion_tokens == _tokens("Hello", " there,", " friend")

    asyncio.run(main())
