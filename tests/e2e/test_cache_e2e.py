"""The prompt cache through the gateway: real Redis, a `tollgate sim` upstream counting calls.

Every proof runs twice: for a team without limits (the lookup is a round trip of its own) and for
a team with a budget and rpm (the lookup rides in the reserve's Lua call, and the write in the
settle's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from tests.e2e.conftest import ADS_KEY, SEARCH_KEY, Gateway, GatewayFactory, sim_policy
from tests.support.sim_process import sim_admin, sim_process

MESSAGES = [{"role": "user", "content": "What is a tollgate?"}]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with sim_process("--model-name", "pool") as url:
        yield url


@pytest.fixture
def sim(sim_url: str) -> Iterator[httpx.Client]:
    with sim_admin(sim_url) as admin:
        admin.post("/sim/stats/reset").raise_for_status()
        yield admin


def calls(sim: httpx.Client) -> int:
    return int(sim.get("/sim/stats").json()["calls"])


def configure(sim: httpx.Client, **changes: float) -> None:
    sim.post("/sim/config", json=changes).raise_for_status()


BUDGET = "    budgets: [{tokens: 10000000, window: day}]\n    limits: {rpm: 100000}\n"


def _policy(sim_url: str, cache: str = "{ttl_s: 600}", budgeted: bool = False) -> str:
    text = sim_policy(chat_candidates="[pool]")
    if budgeted:
        text = text.replace("  search:\n", "  search:\n" + BUDGET, 1)
    text = text.replace(
        "providers:\n", f"providers:\n  gpu:\n    type: openai\n    base_urls: [{sim_url}]\n", 1
    )
    text = text.replace(
        "models:\n",
        "models:\n  pool:\n    provider: gpu\n    model: pool\n    pricing: "
        "{input_per_mtok: 1.0, output_per_mtok: 2.0}\n",
        1,
    )
    text = text.replace("  ads:\n    routes: [embed]", "  ads:\n    routes: [chat, embed]", 1)
    return text.replace("routes:\n  chat:\n", f"routes:\n  chat:\n    cache: {cache}\n", 1)


@pytest.fixture(params=["unlimited", "budgeted"])
async def gateway(
    request: pytest.FixtureRequest,
    make_gateway: GatewayFactory,
    sim_url: str,
    redis_url: str,
    redis_prefix: str,
) -> AsyncIterator[Gateway]:
    policy = _policy(sim_url, budgeted=request.param == "budgeted")
    yield await make_gateway(policy, redis_url=redis_url, redis_prefix=redis_prefix)


async def _post(
    gateway: Gateway, body: bytes | dict[str, Any], key: str = SEARCH_KEY, **headers: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await gateway.http.post(
        "/v1/chat/completions",
        content=content,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers},
    )
    assert response.status_code == 200, response.text
    return response


def _ask(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": MESSAGES, "temperature": 0, "max_tokens": 8, **extra}


async def test_identical_request_twice_is_one_upstream_call(
    gateway: Gateway, sim: httpx.Client
) -> None:
    first = await _post(gateway, _ask())
    second = await _post(gateway, _ask())
    assert calls(sim) == 1
    assert first.headers["x-tollgate-cache"] == "miss"
    assert second.headers["x-tollgate-cache"] == "hit"
    a, b = first.json(), second.json()
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"] and a["model"] == b["model"]


async def test_key_order_and_whitespace_do_not_matter(gateway: Gateway, sim: httpx.Client) -> None:
    await _post(gateway, _ask(seed=5))
    reordered = (
        b'{ "seed": 5,  "max_tokens": 8, "temperature": 0,\n "messages": '
        b'[{"content": "What is a tollgate?", "role": "user"}], "model": "chat" }'
    )
    assert (await _post(gateway, reordered)).headers["x-tollgate-cache"] == "hit"
    assert calls(sim) == 1


async def test_what_changes_the_answer_misses(gateway: Gateway, sim: httpx.Client) -> None:
    await _post(gateway, _ask())
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for changed in (_ask(temperature=0.0, seed=1), _ask(tools=[tool]), _ask(seed=2)):
        assert (await _post(gateway, changed)).headers["x-tollgate-cache"] == "miss"
    # Another team never reads this team's answer.
    assert (await _post(gateway, _ask(), key=ADS_KEY)).headers["x-tollgate-cache"] == "miss"
    assert calls(sim) == 5


async def test_fifty_concurrent_identical_requests_make_one_call(
    gateway: Gateway, sim: httpx.Client
) -> None:
    configure(sim, ttft_ms=200)
    try:
        responses = await asyncio.gather(*(_post(gateway, _ask(seed=50)) for _ in range(50)))
    finally:
        configure(sim, ttft_ms=0)
    assert calls(sim) == 1
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1


async def test_stream_replay_parses_with_the_sdk(gateway: Gateway, sim: httpx.Client) -> None:
    client = gateway.client()
    original = await client.chat.completions.create(**_ask(seed=9))  # type: ignore[call-overload]
    stream = await client.chat.completions.create(  # type: ignore[call-overload]
        **_ask(seed=9), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == original.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == original.usage.completion_tokens
    assert calls(sim) == 1


async def test_a_streamed_miss_is_stored_for_the_next_request(
    gateway: Gateway, sim: httpx.Client
) -> None:
    client = gateway.client()
    stream = await client.chat.completions.create(**_ask(seed=11), stream=True)  # type: ignore[call-overload]
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    again = await _post(gateway, _ask(seed=11))
    assert again.headers["x-tollgate-cache"] == "hit"
    assert again.json()["choices"][0]["message"]["content"] == streamed
    assert calls(sim) == 1


async def test_cache_control(gateway: Gateway, sim: httpx.Client) -> None:
    stored = await _post(gateway, _ask(seed=20), **{"cache-control": "no-store"})
    assert stored.headers["x-tollgate-cache"] == "miss"
    assert (await _post(gateway, _ask(seed=20))).headers["x-tollgate-cache"] == "miss"
    assert calls(sim) == 2  # no-store wrote nothing; the second request stored it
    bypass = await _post(gateway, _ask(seed=20), **{"cache-control": "no-cache"})
    assert bypass.headers["x-tollgate-cache"] == "bypass"
    assert calls(sim) == 3
    assert (await _post(gateway, _ask(seed=20))).headers["x-tollgate-cache"] == "hit"


async def test_ttl_expiry(gateway: Gateway, sim: httpx.Client) -> None:
    await _post(gateway, _ask(seed=30), **{"x-tollgate-cache-ttl": "1"})
    assert (await _post(gateway, _ask(seed=30))).headers["x-tollgate-cache"] == "hit"
    await asyncio.sleep(1.3)
    assert (await _post(gateway, _ask(seed=30))).headers["x-tollgate-cache"] == "miss"
    assert calls(sim) == 2


async def test_nondeterministic_requests_bypass_in_deterministic_mode(
    gateway: Gateway, sim: httpx.Client
) -> None:
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 4, "temperature": 0.9}
    assert (await _post(gateway, body)).headers["x-tollgate-cache"] == "bypass"
    assert (await _post(gateway, body)).headers["x-tollgate-cache"] == "bypass"
    assert calls(sim) == 2


async def _team_commands(redis_url: str, prefix: str, work: Any) -> list[str]:
    """The commands the gateway sent that touch team search's keys while ``work`` ran (MONITOR;
    commands run inside Lua scripts are left out)."""
    client = aioredis.from_url(redis_url)
    seen: list[str] = []
    marker = f"{prefix}{{team:search}}"

    async def listen(monitor: Any) -> None:
        while True:
            found = await monitor.next_command()
            if found.get("client_type") != "lua" and marker in found["command"]:
                seen.append(found["command"].split(" ", 1)[0].upper())

    try:
        async with client.monitor() as monitor:
            listener = asyncio.ensure_future(listen(monitor))
            try:
                await work()
                await asyncio.sleep(0.3)  # the settle lands after the answer
            finally:
                listener.cancel()
    finally:
        await client.aclose()
    return seen


@pytest.mark.parametrize("bounded", [False, True], ids=["counted", "bounded"])
async def test_a_budgeted_miss_is_one_call_before_the_answer_and_one_after(
    make_gateway: GatewayFactory,
    sim_url: str,
    sim: httpx.Client,
    redis_url: str,
    redis_prefix: str,
    bounded: bool,
) -> None:
    """``bounded``: the prompt is above the count threshold (reserved on its bytes), as a
    100k-token prompt would be; its lookup rides in the reserve just the same."""
    extra = {"count_exactly_below_bytes": 64} if bounded else {}
    gateway = await make_gateway(
        _policy(sim_url, budgeted=True), redis_url=redis_url, redis_prefix=redis_prefix, **extra
    )
    await _post(gateway, _ask(seed=70))  # warm: scripts loaded, plan built

    async def miss() -> None:
        assert (await _post(gateway, _ask(seed=71))).headers["x-tollgate-cache"] == "miss"

    async def hit() -> None:
        assert (await _post(gateway, _ask(seed=71))).headers["x-tollgate-cache"] == "hit"

    # Lookup + lock + reserve in one script; settle + entry + unlock in another, after.
    assert await _team_commands(redis_url, redis_prefix, miss) == ["EVALSHA", "EVALSHA"]
    # A hit: the lookup that found it also counted it against rpm.
    assert await _team_commands(redis_url, redis_prefix, hit) == ["EVALSHA"]
    assert calls(sim) == 2
    budget = (
        await gateway.http.get(
            "/v1/tollgate/budget", headers={"authorization": f"Bearer {SEARCH_KEY}"}
        )
    ).json()
    rpm = next(w for w in budget["windows"] if w["limit"] == "rpm")
    assert rpm["used"] == 3


async def test_replicas_share_one_flight_through_the_probe(
    make_gateway: GatewayFactory, sim_url: str, sim: httpx.Client, redis_url: str, redis_prefix: str
) -> None:
    """Two gateways on one Redis: the one whose probe finds the lock held waits for the other's
    answer instead of calling upstream."""
    policy = _policy(sim_url, budgeted=True)
    first = await make_gateway(policy, redis_url=redis_url, redis_prefix=redis_prefix)
    second = await make_gateway(policy, redis_url=redis_url, redis_prefix=redis_prefix)
    configure(sim, ttft_ms=300)
    try:
        leader = asyncio.ensure_future(_post(first, _ask(seed=72)))
        await asyncio.sleep(0.1)
        follower = await _post(second, _ask(seed=72))
        led = await leader
    finally:
        configure(sim, ttft_ms=0)
    assert calls(sim) == 1
    assert led.headers["x-tollgate-cache"] == "miss"
    assert follower.headers["x-tollgate-cache"] == "hit"
    assert follower.json()["choices"] == led.json()["choices"]


async def test_every_kind_of_answer_carries_the_rate_limit_headers(
    make_gateway: GatewayFactory, sim_url: str, sim: httpx.Client, redis_url: str, redis_prefix: str
) -> None:
    # They are formatted when the answer goes out, not when the reserve returns: a miss, a
    # stream, a hit found by the reserve's own lookup and a streamed hit all still carry them.
    gateway = await make_gateway(
        _policy(sim_url, budgeted=True), redis_url=redis_url, redis_prefix=redis_prefix
    )
    answers = [
        await _post(gateway, _ask(seed=40)),
        await _post(gateway, _ask(seed=41, stream=True)),
        await _post(gateway, _ask(seed=40)),
        await _post(gateway, _ask(seed=40, stream=True)),
    ]
    assert [a.headers["x-tollgate-cache"] for a in answers] == ["miss", "miss", "hit", "hit"]
    assert calls(sim) == 2
    for answer in answers:
        assert answer.headers["x-ratelimit-limit-requests"] == "100000"
        assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
        assert answer.headers["x-ratelimit-limit-tokens"] == "10000000"
    left = [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers]
    assert left == sorted(left, reverse=True) and len(set(left)) == 4  # one request each
