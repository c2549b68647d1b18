"""`tollgate reconcile`: the budget counters and the ledger agree, and drift is reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.cli import main
from tests.e2e.conftest import GatewayFactory, key_hash

KEY = "tg-reconcile-key-000001"
POLICY = f"""
providers:
  sim: {{type: sim}}
models:
  sim-chat:
    provider: sim
    model: sim-chat
    pricing: {{input_per_mtok: 1.5, output_per_mtok: 2.5}}
routes:
  chat: {{candidates: [sim-chat]}}
teams:
  search:
    keys: ["{key_hash(KEY)}"]
    budgets: [{{tokens: 100000, window: day}}, {{usd: 10, window: month}}]
"""


async def test_reconcile_agrees_then_reports_drift(
    make_gateway: GatewayFactory,
    tmp_path: Path,
    fresh_postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = await make_gateway(
        POLICY, database_url=fresh_postgres_url, redis_url=redis_url, redis_prefix=redis_prefix
    )
    client = gateway.client(KEY)
    for max_tokens in (3, 7, 11):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
        )
    await gateway.services.background.drain()  # settlements follow the responses
    await gateway.services.ledger.flush()
    policy_dir = gateway.settings.policy
    monkeypatch.setenv("TOLLGATE_REDIS_PREFIX", redis_prefix)
    arguments = [
        "reconcile",
        "--team",
        "search",
        "--policy",
        str(policy_dir),
        "--redis-url",
        redis_url,
        "--database-url",
        fresh_postgres_url,
        "--format",
        "json",
    ]
    # The command runs its own event loop, so it runs in a thread here.
    assert await asyncio.to_thread(main, arguments) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2  # the token and the dollar budget
    assert all(float(row["drift"]) == 0 for row in rows)
    assert all(float(row["budget_used"]) > 0 for row in rows)

    # Redis restarted without persistence: its counters are gone, the ledger remembers.
    client_redis = aioredis.from_url(redis_url)
    try:
        async for key in client_redis.scan_iter(match=f"{redis_prefix}*:b:*"):
            await client_redis.delete(key)
    finally:
        await client_redis.aclose()
    assert await asyncio.to_thread(main, arguments) == 1
    rows = json.loads(capsys.readouterr().out)
    assert all(float(row["drift"]) < 0 for row in rows)
