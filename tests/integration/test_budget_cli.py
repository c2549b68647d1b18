"""``tollgate budget show TEAM`` against the real Redis."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.budget import Charge, PlanCache, RedisLimiter
from gateway.cli import budget
from gateway.policy.loader import load_policy
from tests.support.services import free_port

POLICY = """
providers:
  sim: {type: sim}
models:
  chat-model: {provider: sim, model: chat-model}
routes:
  chat: {candidates: [chat-model]}
teams:
  search:
    budgets:
      - {tokens: 2000000, window: day}
      - {usd: 500, window: month}
    limits: {rpm: 600, tpm: 200000}
    keys_budget: {tokens: 100000, window: day}
  idle: {}
"""


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tollgate")
    budget.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_prefix: str) -> None:
    monkeypatch.setenv("TOLLGATE_REDIS_URL", redis_url)
    monkeypatch.setenv("TOLLGATE_REDIS_PREFIX", redis_prefix)


def spend(redis_url: str, prefix: str, policy_dir: Path) -> None:
    """One settled request and one in flight for team search, key key_1."""

    async def go() -> None:
        client = aioredis.from_url(redis_url)
        try:
            limiter = RedisLimiter(client, prefix)
            plan = PlanCache().get(load_policy(policy_dir), "search")
            await limiter.reserve("r1", plan, "key_1", Charge(1500, 2 * 10**7), timeout_s=60)
            await limiter.settle(plan, "r1", Charge(1200, 1_500_000))
            await limiter.reserve("r2", plan, "key_1", Charge(300, 10**6), timeout_s=600)
        finally:
            await client.aclose()

    asyncio.run(go())


@pytest.mark.usefixtures("env")
def test_show_prints_every_window_as_json(
    policy_dir: Path, redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spend(redis_url, redis_prefix, policy_dir)
    assert run("budget", "show", "search", "--policy", str(policy_dir), "--key", "key_1",
               "--format", "json") == 0  # fmt: skip
    rows = orjson.loads(capsys.readouterr().out)
    found = {row["limit"]: (row["used"], row["reserved"], row["remaining"]) for row in rows}
    assert found == {
        "tokens/day": (1200, 300, 2_000_000 - 1500),
        "usd/month": (0.0015, 0.001, 500 - 0.0025),
        "rpm": (2, 0, 598),
        "tpm": (1200, 300, 200_000 - 1500),
        "key tokens/day": (1200, 300, 100_000 - 1500),
    }
    assert rows[4]["scope"] == "key key_1"
    assert all(row["resets_at"].endswith("Z") for row in rows)


@pytest.mark.usefixtures("env")
def test_show_as_a_table_and_as_csv(
    policy_dir: Path, redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spend(redis_url, redis_prefix, policy_dir)
    assert run("budget", "show", "search", "--policy", str(policy_dir)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["limit", "scope", "unit"]
    assert [line.split()[0] for line in table[1:]] == ["tokens/day", "usd/month", "rpm", "tpm"]

    assert run("budget", "show", "search", "--policy", str(policy_dir), "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["limit"] == "tokens/day" and rows[0]["used"] == "1200"


@pytest.mark.usefixtures("env")
def test_a_team_without_limits_shows_none(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("budget", "show", "idle", "--policy", str(policy_dir)) == 0
    captured = capsys.readouterr()
    assert captured.out == "(none)\n" and "no budgets or rate limits" in captured.err


@pytest.mark.usefixtures("env")
def test_an_unknown_team_is_an_error(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("budget", "show", "nobody", "--policy", str(policy_dir)) == 1
    assert "team 'nobody' is not defined" in capsys.readouterr().err


def test_without_redis_it_says_where_to_look(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TOLLGATE_REDIS_URL", raising=False)
    assert run("budget", "show", "search", "--policy", str(policy_dir)) == 1
    err = capsys.readouterr().err
    assert "TOLLGATE_REDIS_URL is not set" in err and "GET /v1/tollgate/budget" in err


def test_an_unreachable_redis_is_reported_without_a_traceback(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    assert run("budget", "show", "search", "--policy", str(policy_dir), "--redis-url", url) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://user:***@127.0.0.1" in err and "secret" not in err
