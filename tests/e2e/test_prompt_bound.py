"""Big prompts are reserved on a bound (the body's bytes) and settled from the upstream's usage,
so no core-time goes to counting them before the call; the exact count is taken only when the
bound does not fit or the upstream reports no usage."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.tokens import TokenCounter
from tests.e2e.conftest import SEARCH_KEY, Gateway, GatewayFactory, sim_policy
from tests.support.bad_upstream import NO_USAGE_ANSWER, bad_upstream

BOUND_ABOVE = 256
AUTH = {"authorization": f"Bearer {SEARCH_KEY}", "content-type": "application/json"}


def _budgeted(tokens: int, text: str | None = None) -> str:
    policy = text or sim_policy()
    budget = f"    budgets: [{{tokens: {tokens}, window: day}}]\n"
    return policy.replace("  search:\n", "  search:\n" + budget, 1)


def _body(words: int, max_tokens: int = 16) -> bytes:
    messages = [{"role": "user", "content": "hello " * words}]
    return orjson.dumps({"model": "chat", "messages": messages, "max_tokens": max_tokens})


async def _used(gateway: Gateway) -> tuple[int, int]:
    """(used, reserved) of the team's token budget, once no reservation is left."""
    for _ in range(100):
        found = await gateway.http.get("/v1/tollgate/budget", headers=AUTH)
        window = next(w for w in found.json()["windows"] if w["unit"] == "tokens")
        if window["reserved"] == 0:
            break
        await asyncio.sleep(0.02)  # the settle lands just after the answer
    return window["used"], window["reserved"]


async def _make(make_gateway: GatewayFactory, policy: str, **extra: Any) -> Gateway:
    return await make_gateway(policy, count_exactly_below_bytes=BOUND_ABOVE, **extra)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {
        "redis_url": request.getfixturevalue("redis_url"),
        "redis_prefix": request.getfixturevalue("redis_prefix"),
    }


async def test_a_big_prompt_reserves_its_bytes_and_pays_its_usage(
    make_gateway: GatewayFactory, backend: dict[str, Any]
) -> None:
    gateway = await _make(make_gateway, _budgeted(100_000), **backend)
    body = _body(300)
    response = await gateway.http.post("/v1/chat/completions", content=body, headers=AUTH)
    assert response.status_code == 200, response.text
    # Reserved: the body's length plus max_tokens, not a count.
    assert int(response.headers["x-ratelimit-remaining-tokens"]) == 100_000 - len(body) - 16
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] < len(body) / 4
    assert await _used(gateway) == (usage["total_tokens"], 0)


async def test_a_bound_that_does_not_fit_is_counted_exactly(
    make_gateway: GatewayFactory, backend: dict[str, Any]
) -> None:
    body = _body(300)  # ~1,900 bytes, ~310 tokens
    gateway = await _make(make_gateway, _budgeted(len(body) // 2), **backend)
    response = await gateway.http.post("/v1/chat/completions", content=body, headers=AUTH)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert await _used(gateway) == (usage["total_tokens"], 0)
    # A small prompt is counted before the call, as ever.
    small = _body(3)
    again = await gateway.http.post("/v1/chat/completions", content=small, headers=AUTH)
    assert again.status_code == 200, again.text


async def test_a_cached_route_probes_with_the_bound_and_recounts_when_it_does_not_fit(
    make_gateway: GatewayFactory, backend: dict[str, Any]
) -> None:
    """On Redis the cache lookup rides in the reserve's Lua call, big prompts included. A
    bound that does not fit refuses that call (which drops the lock it took); the gateway then
    counts exactly, looks up alone and reserves again, and the answer is cached as usual."""
    body = _body(300)
    policy = _budgeted(len(body) // 2) + "cache:\n  mode: all\n  ttl_s: 60\n"
    gateway = await _make(make_gateway, policy, **backend)
    response = await gateway.http.post("/v1/chat/completions", content=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["x-tollgate-cache"] == "miss"
    usage = response.json()["usage"]
    assert await _used(gateway) == (usage["total_tokens"], 0)
    again = await gateway.http.post("/v1/chat/completions", content=body, headers=AUTH)
    assert again.status_code == 200, again.text
    assert again.headers["x-tollgate-cache"] == "hit"
    assert again.json()["choices"] == response.json()["choices"]
    assert await _used(gateway) == (usage["total_tokens"], 0)  # a hit costs no tokens
    # A bound that fits rides in the probe and is reserved as it is (another prompt: the two
    # gateways share the Redis cache).
    roomy = await _make(make_gateway, _budgeted(100_000) + "cache:\n  mode: all\n", **backend)
    other = _body(301)
    used, _ = await _used(roomy)  # on Redis the budget's window is shared with the first gateway
    fits = await roomy.http.post("/v1/chat/completions", content=other, headers=AUTH)
    assert fits.status_code == 200 and fits.headers["x-tollgate-cache"] == "miss"
    remaining = int(fits.headers["x-ratelimit-remaining-tokens"])
    assert remaining == 100_000 - used - len(other) - 16


async def test_without_usage_from_upstream_the_prompt_is_counted_exactly(
    make_gateway: GatewayFactory,
) -> None:
    async with bad_upstream() as upstream:
        policy = sim_policy().replace(
            "providers:\n",
            f"providers:\n  bad:\n    type: openai\n    base_urls: [{upstream.url('no-usage')}]\n",
            1,
        )
        policy = policy.replace(
            "models:\n", "models:\n  quiet:\n    provider: bad\n    model: gpt-4o\n", 1
        )
        policy = policy.replace("candidates: [sim-chat]", "candidates: [quiet]", 1)
        gateway = await _make(make_gateway, _budgeted(100_000, policy))
        body = _body(300)
        response = await gateway.http.post("/v1/chat/completions", content=body, headers=AUTH)
        assert response.status_code == 200, response.text
        counter = TokenCounter()
        prompt = counter.count_chat(orjson.loads(body)["messages"], "gpt-4o")
        completion = counter.count_text(NO_USAGE_ANSWER, "gpt-4o")
        assert await _used(gateway) == (prompt + completion, 0)
