"""TOLLGATE_DATABASE_URL switches SQLite to Postgres and TOLLGATE_REDIS_URL the in-process
state to Redis; each works without the other, and /readyz reports what it depends on."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import GatewayFactory, sim_policy
from tests.support.services import ThrowawayRedis

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_postgres_and_redis(
    make_gateway: GatewayFactory, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    gateway = await make_gateway(
        sim_policy(), database_url=postgres_url, redis_url=redis_url, redis_prefix=redis_prefix
    )
    key, _ = await gateway.services.key_store.create("search", name="pg-key")
    completion = await gateway.client(key).chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=2
    )
    assert completion.choices
    checks = (await gateway.http.get("/readyz")).json()["checks"]
    assert checks["database"]["backend"] == "postgresql"
    assert checks["state"]["backend"] == "redis"


async def test_postgres_without_redis(make_gateway: GatewayFactory, postgres_url: str) -> None:
    gateway = await make_gateway(sim_policy(), database_url=postgres_url)
    key, _ = await gateway.services.key_store.create("search")
    assert (await gateway.client(key).models.list()).data
    checks = (await gateway.http.get("/readyz")).json()["checks"]
    assert checks["state"]["backend"] == "memory"


async def test_redis_without_postgres(
    make_gateway: GatewayFactory, redis_url: str, redis_prefix: str
) -> None:
    gateway = await make_gateway(sim_policy(), redis_url=redis_url, redis_prefix=redis_prefix)
    assert (await gateway.client().models.list()).data
    checks = (await gateway.http.get("/readyz")).json()["checks"]
    assert checks["database"]["backend"] == "sqlite"
    assert checks["state"]["backend"] == "redis"


async def test_readyz_reports_redis_down_and_recovers(make_gateway: GatewayFactory) -> None:
    with ThrowawayRedis() as redis:
        gateway = await make_gateway(sim_policy(), redis_url=redis.url)
        assert (await gateway.http.get("/readyz")).status_code == 200
        redis.kill()
        down = await gateway.http.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["state"]["ok"] is False
        # Requests that do not need Redis keep being served while it is away.
        assert (await gateway.client().models.list()).data
        redis.start()
        assert (await gateway.http.get("/readyz")).status_code == 200


async def test_bad_database_url_fails_at_start(make_gateway: GatewayFactory) -> None:
    with pytest.raises(OSError):
        await make_gateway(
            sim_policy(), database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
        )
