"""Budgets are exact across replicas: real gateway processes sharing one real Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from gateway.budget import RedisLimiter, build_plan
from gateway.policy.loader import load_policy
from gateway.tokens import TokenCounter
from tests.e2e.conftest import key_hash
from tests.support.gateway_process import Served, serve
from tests.support.services import ThrowawayRedis

KEY = "tg-budget-team-key-0001"
OPEN_KEY = "tg-budget-open-key-0001"
MESSAGES = [{"role": "user", "content": "hi"}]
PROMPT = TokenCounter().count_chat(MESSAGES, "sim-chat")
# $1 per million input tokens and $2 per million output tokens: whole nano-dollars per token.
INPUT_USD, OUTPUT_USD = 1e-6, 2e-6


def _policy(team_block: str, sim: str = "{type: sim}") -> str:
    return f"""
providers:
  sim: {sim}
models:
  sim-chat:
    provider: sim
    model: sim-chat
    pricing: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
routes:
  chat: {{candidates: [sim-chat]}}
teams:
{team_block}
"""


def _write(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "p.yaml").write_text(text)
    return directory


@pytest.fixture
def gateways() -> Iterator[list[Served]]:
    """The gateway processes a test starts; killed after it."""
    started: list[Served] = []
    yield started
    for served in started:
        served.stop(signal.SIGKILL)


def _start(tmp_path: Path, policy: Path, redis_url: str, prefix: str, count: int) -> list[Served]:
    env = {"TOLLGATE_REDIS_URL": redis_url, "TOLLGATE_REDIS_PREFIX": prefix}
    return [serve(tmp_path / f"replica-{i}", policy, env=env) for i in range(count)]


async def _fire(urls: list[str], key: str, count: int, max_tokens: int) -> Counter[str]:
    """``count`` concurrent chat requests spread over ``urls``; outcome counts by kind."""
    clients = [openai.AsyncOpenAI(base_url=u, api_key=key, max_retries=0) for u in urls]

    async def one(i: int) -> str:
        try:
            await clients[i % len(clients)].chat.completions.create(
                model="chat", messages=MESSAGES, max_tokens=max_tokens
            )
        except openai.RateLimitError as exc:
            return str(exc.body["type"]) if isinstance(exc.body, dict) else "429"
        return "ok"

    outcomes = Counter(await asyncio.gather(*(one(i) for i in range(count))))
    for client in clients:
        await client.close()
    return outcomes


async def _used(redis_url: str, prefix: str, policy: Path, team: str) -> dict[str, tuple[int, int]]:
    """(used, reserved) per limit, read straight from Redis once the gateways' settlements
    (sent just after each response) have landed."""
    deadline = time.monotonic() + 10
    while True:
        found = await _read(redis_url, prefix, policy, team)
        if all(reserved == 0 for _, reserved in found.values()) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def _read(redis_url: str, prefix: str, policy: Path, team: str) -> dict[str, tuple[int, int]]:
    document = load_policy(policy).document
    plan = build_plan(team, document.teams[team], document.defaults)
    client = aioredis.from_url(redis_url)
    try:
        states = await RedisLimiter(client, prefix).snapshot(plan)
    finally:
        await client.aclose()
    return {f"{s.spec.unit}:{s.spec.window}": (s.used, s.reserved) for s in states}


async def test_token_budget_is_exact_across_three_replicas(
    tmp_path: Path, redis_url: str, redis_prefix: str, gateways: list[Served]
) -> None:
    team = (
        f'  search:\n    keys: ["{key_hash(KEY)}"]\n    budgets: [{{tokens: 2000, window: day}}]\n'
    )
    policy = _write(tmp_path, _policy(team))
    gateways += await asyncio.to_thread(_start, tmp_path, policy, redis_url, redis_prefix, 3)
    outcomes = await _fire([g.base_url for g in gateways], KEY, 300, max_tokens=20)
    per_request = PROMPT + 20
    best = 2000 // per_request
    assert set(outcomes) <= {"ok", "insufficient_quota"}
    assert best - 1 <= outcomes["ok"] <= best
    used, reserved = (await _used(redis_url, redis_prefix, policy, "search"))["tokens:day"]
    assert used == outcomes["ok"] * per_request <= 2000
    assert reserved == 0


async def test_dollar_budget_is_exact_across_three_replicas(
    tmp_path: Path, redis_url: str, redis_prefix: str, gateways: list[Served]
) -> None:
    team = (
        f'  search:\n    keys: ["{key_hash(KEY)}"]\n    budgets: [{{usd: 0.005, window: month}}]\n'
    )
    policy = _write(tmp_path, _policy(team))
    gateways += await asyncio.to_thread(_start, tmp_path, policy, redis_url, redis_prefix, 3)
    outcomes = await _fire([g.base_url for g in gateways], KEY, 300, max_tokens=20)
    nanos_per_request = round((PROMPT * INPUT_USD + 20 * OUTPUT_USD) * 1e9)
    best = 5_000_000 // nanos_per_request
    assert best - 1 <= outcomes["ok"] <= best
    used, reserved = (await _used(redis_url, redis_prefix, policy, "search"))["usd:month"]
    assert used == outcomes["ok"] * nanos_per_request <= 5_000_000
    assert reserved == 0


async def test_rpm_per_minute_window_across_replicas(
    tmp_path: Path, redis_url: str, redis_prefix: str, gateways: list[Served]
) -> None:
    team = f'  search:\n    keys: ["{key_hash(KEY)}"]\n    limits: {{rpm: 40}}\n'
    policy = _write(tmp_path, _policy(team))
    gateways += await asyncio.to_thread(_start, tmp_path, policy, redis_url, redis_prefix, 3)
    urls = [g.base_url for g in gateways]
    admitted_by_minute: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=30) as http:

        async def one(i: int) -> None:
            minute_before = int(time.time() // 60)
            response = await http.post(
                f"{urls[i % 3]}/chat/completions",
                json={"model": "chat", "messages": MESSAGES, "max_tokens": 1},
                headers={"authorization": f"Bearer {KEY}"},
            )
            minute_after = int(time.time() // 60)
            if response.status_code == 200:
                # Counted in the window it was reserved in: one of these two minutes.
                admitted_by_minute[minute_before if minute_before == minute_after else -1] += 1
            else:
                assert response.status_code == 429
                assert response.headers["retry-after"].isdigit()
                assert "x-ratelimit-limit-requests" in response.headers
                kinds[response.json()["error"]["type"]] += 1

        await asyncio.gather(*(one(i) for i in range(100)))
    assert kinds and set(kinds) == {"rate_limit_exceeded"}
    # Within one minute window no more than the limit; a boundary crossed mid-test may admit
    # up to the limit again in the next window, never more.
    whole = {m: n for m, n in admitted_by_minute.items() if m != -1}
    assert all(n <= 40 for n in whole.values())
    assert sum(admitted_by_minute.values()) <= 40 * (1 + len(admitted_by_minute))


async def test_client_leaving_mid_stream_pays_for_what_was_generated(
    tmp_path: Path, redis_url: str, redis_prefix: str, gateways: list[Served]
) -> None:
    team = (
        f'  search:\n    keys: ["{key_hash(KEY)}"]\n'
        "    budgets: [{tokens: 100000, window: day}]\n"
    )
    policy = _write(tmp_path, _policy(team, sim="{type: sim, tokens_per_s: 50}"))
    gateways += await asyncio.to_thread(_start, tmp_path, policy, redis_url, redis_prefix, 1)
    client = openai.AsyncOpenAI(base_url=gateways[0].base_url, api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=500, stream=True
    )
    seen = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
        if seen == 5:
            break
    await stream.close()
    deadline = time.monotonic() + 10
    while True:
        used, reserved = (await _used(redis_url, redis_prefix, policy, "search"))["tokens:day"]
        if (reserved == 0 and used > 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert reserved == 0, "the reservation is released"
    # Charged the prompt and the tokens generated before the gateway closed the upstream: at
    # least what the client saw, far from the 500 it asked for.
    assert PROMPT + 5 <= used <= PROMPT + 40


async def test_redis_dies_and_returns(tmp_path: Path, gateways: list[Served]) -> None:
    teams = (
        f'  search:\n    keys: ["{key_hash(KEY)}"]\n'
        "    budgets: [{tokens: 100000, window: day}]\n"
        "    on_redis_down: fail_closed\n"
        f'  open:\n    keys: ["{key_hash(OPEN_KEY)}"]\n'
        "    budgets: [{tokens: 100000, window: day}]\n"
        "    on_redis_down: fail_open\n"
    )
    policy = _write(tmp_path, _policy(teams))
    with ThrowawayRedis() as redis:
        gateways += await asyncio.to_thread(_start, tmp_path, policy, redis.url, "t:", 1)
        url = gateways[0].base_url
        closed = openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=10)
        opened = openai.AsyncOpenAI(base_url=url, api_key=OPEN_KEY, max_retries=0, timeout=10)
        ask = {"model": "chat", "messages": MESSAGES, "max_tokens": 2}
        assert (await closed.chat.completions.create(**ask)).choices  # type: ignore[call-overload]
        redis.kill()
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            await closed.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert caught.value.status_code == 503
        assert time.monotonic() - started < 5, "fail_closed answers promptly"
        assert (await opened.chat.completions.create(**ask)).choices  # type: ignore[call-overload]
        async with httpx.AsyncClient() as http:
            ready = (await http.get(url.removesuffix("/v1") + "/readyz")).json()
        assert ready["checks"]["budget"]["ok"] is False
        redis.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                await closed.chat.completions.create(**ask)  # type: ignore[call-overload]
                break
            except openai.InternalServerError:
                assert time.monotonic() < deadline, "the gateway did not recover by itself"
                await asyncio.sleep(0.2)
        used, _ = (await _used(redis.url, "t:", policy, "search"))["tokens:day"]
        assert used == PROMPT + 2  # counted again after the restart (Redis came back empty)
