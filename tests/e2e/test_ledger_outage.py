"""Postgres stopped for 30 s under traffic through a real gateway: exactly one ledger row per
request once it is back, and the ledger's sums equal the budget counters."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from gateway.budget import RedisLimiter, build_plan
from gateway.policy.loader import load_policy
from tests.e2e.conftest import key_hash
from tests.support.gateway_process import serve
from tests.support.services import ThrowawayPostgres

KEY = "tg-ledger-outage-key-01"
POLICY = f"""
providers:
  sim: {{type: sim}}
models:
  sim-chat:
    provider: sim
    model: sim-chat
    pricing: {{input_per_mtok: 1, output_per_mtok: 2}}
routes:
  chat: {{candidates: [sim-chat]}}
teams:
  outage:
    keys: ["{key_hash(KEY)}"]
    budgets: [{{tokens: 100000000, window: month}}, {{usd: 1000, window: month}}]
"""
TOTAL = 2000


async def _send(url: str, count: int, start: int, http: httpx.AsyncClient) -> int:
    """``count`` requests, 20 at a time; how many got a 200."""
    queue = iter(range(start, start + count))
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for i in queue:
            response = await http.post(
                f"{url}/chat/completions",
                json={
                    "model": "chat",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1 + i % 5,
                },
                headers={"authorization": f"Bearer {KEY}", "x-request-id": f"outage-{i}"},
            )
            assert response.status_code == 200, response.text
            ok += 1

    await asyncio.gather(*(worker() for _ in range(20)))
    return ok


async def test_postgres_down_for_30s_loses_nothing(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    policy = tmp_path / "policies"
    policy.mkdir()
    (policy / "p.yaml").write_text(POLICY)
    with ThrowawayPostgres() as postgres:
        env = {
            "TOLLGATE_DATABASE_URL": postgres.url,
            "TOLLGATE_REDIS_URL": redis_url,
            "TOLLGATE_REDIS_PREFIX": redis_prefix,
        }
        gateway = await asyncio.to_thread(serve, tmp_path, policy, env=env)
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                served = await _send(gateway.base_url, TOTAL // 2, 0, http)
                await asyncio.to_thread(postgres.stop)
                down_since = time.monotonic()
                # The gateway keeps serving (keys are static, budgets in Redis); rows spool.
                served += await _send(gateway.base_url, TOTAL // 2, TOTAL // 2, http)
                await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_since)))
                await asyncio.to_thread(postgres.start)
            assert served == TOTAL
            connection = await asyncpg.connect(postgres.url.replace("+asyncpg", ""))
            try:
                deadline = time.monotonic() + 90
                while True:
                    rows = await connection.fetchval(
                        "SELECT COUNT(*) FROM usage_ledger WHERE team = 'outage'"
                    )
                    if rows >= TOTAL or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                distinct = await connection.fetchval(
                    "SELECT COUNT(DISTINCT client_request_id) FROM usage_ledger"
                    " WHERE team = 'outage'"
                )
                tokens, usd = await connection.fetchrow(
                    "SELECT SUM(prompt_tokens + completion_tokens), SUM(cost_usd)"
                    " FROM usage_ledger WHERE team = 'outage'"
                )
            finally:
                await connection.close()
        finally:
            gateway.stop()
    assert rows == distinct == TOTAL

    document = load_policy(policy).document
    plan = build_plan("outage", document.teams["outage"], document.defaults)
    client = aioredis.from_url(redis_url)
    try:
        windows = {w.spec.unit: w for w in await RedisLimiter(client, redis_prefix).snapshot(plan)}
    finally:
        await client.aclose()
    assert windows["tokens"].reserved == windows["usd"].reserved == 0
    assert windows["tokens"].used == tokens
    assert windows["usd"].used == round(usd * 1_000_000_000)
