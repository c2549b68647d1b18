"""An ``openai`` provider with several replicas, over real sockets: affinity, breakers, shedding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import orjson
import pytest
from aiohttp import web

from gateway.errors import UpstreamError
from gateway.policy.schema import OpenAIProvider
from gateway.providers.base import Endpoint, UpstreamRequest
from gateway.providers.openai_compat import OpenAIUpstream

ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class Replica:
    """A tiny OpenAI-compatible server: answers, fails with 500, or holds requests."""

    def __init__(self) -> None:
        self.served = 0
        self.failing = False
        self.hold = asyncio.Event()
        self.hold.set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.served += 1
        await self.hold.wait()
        if self.failing:
            return web.Response(status=500, body=b'{"error": {"message": "down"}}')
        return web.Response(body=orjson.dumps(ANSWER), content_type="application/json")


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(3):
            replica = Replica()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", replica.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            replica.url = f"http://127.0.0.1:{port}/v1"
            found.append(replica)
        yield found


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("the requests never reached the replicas")


def request(key: str | None, number: int = 0) -> UpstreamRequest:
    return UpstreamRequest(
        endpoint=Endpoint.CHAT,
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        stream=False,
        timeout_s=5.0,
        request_id=f"req-{number}",
        affinity_key=key,
    )


def upstream(replicas: list[Replica], **fields: object) -> OpenAIUpstream:
    spec = OpenAIProvider.model_validate(
        {"type": "openai", "base_urls": [r.url for r in replicas], **fields}
    )
    return OpenAIUpstream("pool", spec)


async def test_a_shared_prefix_lands_on_one_replica(replicas: list[Replica]) -> None:
    client = upstream(replicas)
    try:
        for number in range(20):
            await client.send(request("system-prompt-a", number))
        assert sorted(r.served for r in replicas) == [0, 0, 20]
        for number in range(30):  # without a key: least outstanding, spread evenly
            await client.send(request(None, number))
        assert sorted(r.served for r in replicas) == [10, 10, 30]
    finally:
        await client.aclose()


async def test_concurrent_requests_spill_past_the_load_bound(replicas: list[Replica]) -> None:
    client = upstream(replicas)
    for replica in replicas:
        replica.hold.clear()
    try:
        tasks = [
            asyncio.ensure_future(client.send(request("system-prompt-a", n))) for n in range(9)
        ]
        await until(lambda: sum(r.served for r in replicas) == 9)
        loads = sorted(r.served for r in replicas)
        assert loads[-1] < 9  # spread once the home replica carried its bound
        assert client.balancer.in_flight == [r.served for r in replicas]
        for replica in replicas:
            replica.hold.set()
        await asyncio.gather(*tasks)
        assert client.balancer.in_flight == [0, 0, 0]
    finally:
        await client.aclose()


async def test_a_failing_replica_is_avoided(replicas: list[Replica]) -> None:
    client = upstream(replicas)
    try:
        await client.send(request("system-prompt-a"))
        home = next(r for r in replicas if r.served)
        home.failing = True
        for _ in range(5):  # its breaker opens after five failures in a row
            with pytest.raises(UpstreamError):
                await client.send(request("system-prompt-a"))
        failures_seen = home.served
        for number in range(10):  # the prefix moves to the next replica on the ring
            await client.send(request("system-prompt-a", number))
        assert home.served == failures_seen
        assert sum(r.served for r in replicas if r is not home) == 10
        assert client.balancer.snapshot()[replicas.index(home)]["state"] == "open"
    finally:
        await client.aclose()


async def test_max_in_flight_sheds_with_a_retryable_503(replicas: list[Replica]) -> None:
    client = upstream(replicas[:1], max_in_flight=2)
    client.balancer.queue_timeout_s = 0.05
    replicas[0].hold.clear()
    try:
        held = [asyncio.ensure_future(client.send(request(None, n))) for n in range(2)]
        await until(lambda: replicas[0].served == 2)
        with pytest.raises(UpstreamError) as caught:
            await client.send(request(None, 3))
        assert caught.value.status == 503 and caught.value.retryable
        assert replicas[0].served == 2  # shed before it reached the replica
        replicas[0].hold.set()
        await asyncio.gather(*held)
    finally:
        await client.aclose()
