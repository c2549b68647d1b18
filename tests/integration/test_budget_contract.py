"""The limiter contract, run against both implementations: Redis (real) and in process.

Time is injected (``now=``), so window rollovers and expiry are exact and instant; the Redis
side is the shared server under this test's own key prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.budget import (
    BudgetPlan,
    Charge,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    Settlement,
    build_plan,
)
from gateway.errors import QuotaExceeded, RateLimited
from gateway.policy.schema import Defaults, Team
from gateway.redis_scripts import ScriptClient

NOON = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 11, 27, 0, 0, 0, tzinfo=UTC).timestamp()
NANO = 1_000_000_000


def plan_of(spec: dict[str, Any], name: str = "search") -> BudgetPlan:
    return build_plan(name, Team.model_validate(spec), Defaults())


@pytest.fixture(params=["memory", "redis", "redis-lean"])
async def limiter(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Limiter]:
    """In process; on Redis through redis-py; on Redis through the lean script client (what
    the gateway runs the scripts on for a standalone Redis)."""
    if request.param == "memory":
        yield MemoryLimiter(redis_prefix)
        return
    client = aioredis.from_url(redis_url)
    scripts = ScriptClient.from_url(redis_url) if request.param == "redis-lean" else None
    try:
        yield RedisLimiter(client, redis_prefix, scripts=scripts)
    finally:
        if scripts is not None:
            await scripts.aclose()
        await client.aclose()


async def state(
    limiter: Limiter, plan: BudgetPlan, now: float, key_id: str | None = None
) -> dict[str, tuple[int, int]]:
    """{limit name: (used, reserved)} in the windows holding ``now``."""
    return {
        w.spec.name: (w.used, w.reserved) for w in await limiter.snapshot(plan, key_id, now=now)
    }


async def test_reserve_holds_the_estimate_in_every_window_and_counts_the_request(
    limiter: Limiter,
) -> None:
    plan = plan_of(
        {
            "budgets": [{"tokens": 1000, "window": "day"}, {"usd": 5, "window": "month"}],
            "limits": {"rpm": 10, "tpm": 500},
            "keys_budget": {"tokens": 300, "window": "week"},
        }
    )
    admission = await limiter.reserve("r1", plan, "k1", Charge(120, 7_000), timeout_s=60, now=NOON)
    assert admission.admitted and not admission.replayed
    assert await state(limiter, plan, NOON, "k1") == {
        "tokens/day": (0, 120),
        "usd/month": (0, 7_000),
        "rpm": (1, 0),
        "tpm": (0, 120),
        "key tokens/week": (0, 120),
    }


async def test_settle_charges_the_usage_and_frees_the_hold_once(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 1000, "window": "day"}, {"usd": 1, "window": "day"}]})
    await limiter.reserve("r1", plan, "k1", Charge(300, 9_000), timeout_s=60, now=NOON)
    assert await limiter.settle(plan, "r1", Charge(120, 4_000)) is Settlement.DONE
    assert await state(limiter, plan, NOON) == {"tokens/day": (120, 0), "usd/day": (4_000, 0)}
    # Idempotent by request id: a second settle (or a release) changes nothing.
    assert await limiter.settle(plan, "r1", Charge(120, 4_000)) is Settlement.NONE
    assert await limiter.release(plan, "r1") is Settlement.NONE
    assert await state(limiter, plan, NOON) == {"tokens/day": (120, 0), "usd/day": (4_000, 0)}


async def test_an_overshoot_is_charged_past_the_limit_and_then_refuses(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}]})
    await limiter.reserve("r1", plan, "k", Charge(50), timeout_s=60, now=NOON)
    await limiter.settle(plan, "r1", Charge(150))
    assert await state(limiter, plan, NOON) == {"tokens/day": (150, 0)}
    [window] = await limiter.snapshot(plan, now=NOON)
    assert window.remaining == 0
    refused = await limiter.reserve("r2", plan, "k", Charge(1), timeout_s=60, now=NOON)
    assert not refused.admitted
    assert refused.refusal is not None and refused.refusal.error_type == "insufficient_quota"


async def test_release_gives_the_hold_back_but_the_request_still_counts(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "hour"}], "limits": {"rpm": 5}})
    await limiter.reserve("r1", plan, "k", Charge(80), timeout_s=60, now=NOON)
    assert await limiter.release(plan, "r1") is Settlement.DONE
    assert await limiter.release(plan, "r1") is Settlement.NONE
    assert await state(limiter, plan, NOON) == {"tokens/hour": (0, 0), "rpm": (1, 0)}


async def test_the_boundary_is_inclusive_and_a_refusal_changes_nothing(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}], "limits": {"rpm": 50}})
    assert (await limiter.reserve("r1", plan, "k", Charge(60), timeout_s=60, now=NOON)).admitted
    before = await state(limiter, plan, NOON)
    refused = await limiter.reserve("r2", plan, "k", Charge(41), timeout_s=60, now=NOON)
    assert not refused.admitted
    assert await state(limiter, plan, NOON) == before  # not even rpm counted
    assert (await limiter.reserve("r3", plan, "k", Charge(40), timeout_s=60, now=NOON)).admitted
    assert await state(limiter, plan, NOON) == {"tokens/day": (0, 100), "rpm": (2, 0)}


async def test_a_budget_refusal_is_insufficient_quota_with_retry_after(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}], "limits": {"tpm": 1000}})
    await limiter.reserve("r1", plan, "k", Charge(90), timeout_s=60, now=NOON)
    refused = await limiter.reserve("r2", plan, "k", Charge(20), timeout_s=60, now=NOON)
    refusal = refused.refusal
    assert refusal is not None
    assert (refusal.spec.name, refusal.used, refusal.reserved, refusal.needed) == (
        "tokens/day",
        0,
        90,
        20,
    )
    assert refusal.retry_after_s == 12 * 3600  # noon to midnight
    error = refused.error()
    assert isinstance(error, QuotaExceeded) and error.status == 429
    assert error.type == "insufficient_quota"
    assert error.headers["retry-after"] == str(12 * 3600)
    assert "budget of 100 tokens per day" in error.message


async def test_rpm_refuses_with_rate_limit_exceeded_until_the_minute_ends(
    limiter: Limiter,
) -> None:
    plan = plan_of({"limits": {"rpm": 3}})
    late = NOON + 59.5  # half a second before 12:01
    for i in range(3):
        assert (
            await limiter.reserve(f"a{i}", plan, "k", Charge(5), timeout_s=9, now=late)
        ).admitted
    refused = await limiter.reserve("a3", plan, "k", Charge(5), timeout_s=9, now=late)
    error = refused.error()
    assert isinstance(error, RateLimited) and error.type == "rate_limit_exceeded"
    assert error.headers["retry-after"] == "1"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-reset-requests"] == "500ms"
    # The next minute is a new window: admitted again, three times.
    for i in range(3):
        admitted = await limiter.reserve(f"b{i}", plan, "k", Charge(5), timeout_s=9, now=NOON + 60)
        assert admitted.admitted
    assert not (
        await limiter.reserve("b3", plan, "k", Charge(5), timeout_s=9, now=NOON + 61)
    ).admitted


async def test_tpm_counts_reserved_tokens(limiter: Limiter) -> None:
    plan = plan_of({"limits": {"tpm": 100}})
    await limiter.reserve("r1", plan, "k", Charge(70), timeout_s=60, now=NOON)
    refused = await limiter.reserve("r2", plan, "k", Charge(31), timeout_s=60, now=NOON)
    assert refused.refusal is not None and refused.refusal.error_type == "rate_limit_exceeded"
    assert "tokens per minute" in refused.refusal.message()
    await limiter.settle(plan, "r1", Charge(40))
    assert (await limiter.reserve("r3", plan, "k", Charge(60), timeout_s=60, now=NOON)).admitted


async def test_a_budget_outranks_a_rate_limit_when_both_refuse(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 10, "window": "month"}], "limits": {"rpm": 1}})
    await limiter.reserve("r1", plan, "k", Charge(10), timeout_s=60, now=NOON)
    refused = await limiter.reserve("r2", plan, "k", Charge(5), timeout_s=60, now=NOON)
    refusal = refused.refusal
    assert refusal is not None and refusal.error_type == "insufficient_quota"
    assert refusal.retry_after_s == int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() - NOON)


async def test_headers_report_rpm_and_the_tightest_token_limit(limiter: Limiter) -> None:
    plan = plan_of(
        {
            "budgets": [{"tokens": 10_000, "window": "day"}],
            "limits": {"rpm": 60, "tpm": 1_000},
            "keys_budget": {"tokens": 500, "window": "day"},
        }
    )
    admission = await limiter.reserve("r1", plan, "k", Charge(100), timeout_s=60, now=NOON + 15)
    assert admission.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "45s",
        "x-ratelimit-limit-tokens": "500",  # the key's day budget has the fewest tokens left
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "11h59m45s",
    }


async def test_a_key_budget_sits_under_the_team_budget(limiter: Limiter) -> None:
    plan = plan_of(
        {
            "budgets": [{"tokens": 250, "window": "day"}],
            "keys_budget": {"tokens": 100, "window": "day"},
        }
    )
    for i in range(2):
        assert (
            await limiter.reserve(f"a{i}", plan, "ka", Charge(50), timeout_s=60, now=NOON)
        ).admitted
    refused = await limiter.reserve("a2", plan, "ka", Charge(50), timeout_s=60, now=NOON)
    assert refused.refusal is not None and refused.refusal.spec.scope == "key"
    assert "This API key has used its budget" in refused.refusal.message()
    # Another key of the same team has its own 100, but the team's 250 caps both together.
    for i in range(2):
        assert (
            await limiter.reserve(f"b{i}", plan, "kb", Charge(50), timeout_s=60, now=NOON)
        ).admitted
    refused = await limiter.reserve("c0", plan, "kc", Charge(60), timeout_s=60, now=NOON)
    assert refused.refusal is not None and refused.refusal.spec.scope == "team"
    assert await state(limiter, plan, NOON, "ka") == {
        "tokens/day": (0, 200),
        "key tokens/day": (0, 100),
    }


async def test_dollar_budgets_are_exact_in_nano_dollars(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"usd": 0.001, "window": "day"}]})
    price = Charge.of(10, 0.0001)
    assert price.nano_usd == 100_000
    admitted = [
        (await limiter.reserve(f"r{i}", plan, "k", price, timeout_s=60, now=NOON)).admitted
        for i in range(11)
    ]
    assert admitted == [True] * 10 + [False]
    assert await state(limiter, plan, NOON) == {"usd/day": (0, 1_000_000)}


async def test_large_dollar_amounts_stay_exact(limiter: Limiter) -> None:
    # 16 significant digits: Lua would print such numbers as 1.2345678901235e+15.
    plan = plan_of({"budgets": [{"usd": 5_000_000, "window": "month"}]})
    estimate = Charge(1, 1_234_567_890_123_456)
    await limiter.reserve("r1", plan, "k", estimate, timeout_s=60, now=NOON)
    assert await limiter.extend(plan, "r1", Charge(1, 1_234_567_890_123_457), now=NOON)
    assert await state(limiter, plan, NOON) == {"usd/month": (0, 1_234_567_890_123_457)}
    await limiter.settle(plan, "r1", Charge(1, 2_999_999_999_999_999))
    assert await state(limiter, plan, NOON) == {"usd/month": (2_999_999_999_999_999, 0)}


async def test_extend_raises_a_hold_only_when_it_fits(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"usd": 1, "window": "day"}, {"tokens": 1000, "window": "day"}]})
    await limiter.reserve("r1", plan, "k", Charge(100, NANO // 2), timeout_s=60, now=NOON)
    await limiter.reserve("r2", plan, "k", Charge(100, NANO // 4), timeout_s=60, now=NOON)
    # Failover to a dearer deployment: r1 needs $0.70 now; $0.25 is held by r2.
    assert await limiter.extend(plan, "r1", Charge(100, 7 * NANO // 10), now=NOON)
    assert await state(limiter, plan, NOON) == {
        "usd/day": (0, 95 * NANO // 100),
        "tokens/day": (0, 200),
    }
    # $0.80 would not fit: refused, and nothing changed.
    assert not await limiter.extend(plan, "r1", Charge(100, 8 * NANO // 10), now=NOON)
    assert await state(limiter, plan, NOON) == {
        "usd/day": (0, 95 * NANO // 100),
        "tokens/day": (0, 200),
    }
    # Lowering always fits; settle gives back what is held now, not what was first reserved.
    assert await limiter.extend(plan, "r1", Charge(50, NANO // 10), now=NOON)
    await limiter.settle(plan, "r1", Charge(40, NANO // 20))
    assert await state(limiter, plan, NOON) == {
        "usd/day": (NANO // 20, NANO // 4),
        "tokens/day": (40, 100),
    }
    assert not await limiter.extend(plan, "r1", Charge(1, 1), now=NOON)  # settled: gone
    assert not await limiter.extend(plan, "never", Charge(1, 1), now=NOON)


async def test_an_expired_reservation_is_swept_and_a_late_settle_still_charges(
    limiter: Limiter,
) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}]})
    await limiter.reserve("dead", plan, "k", Charge(80), timeout_s=10, now=NOON)
    await limiter.reserve("slow", plan, "k", Charge(20), timeout_s=10, now=NOON)
    # Before its expiry (timeout + the 30 s margin) the hold stands.
    assert not (
        await limiter.reserve("x", plan, "k", Charge(1), timeout_s=10, now=NOON + 39)
    ).admitted
    # After it, the next call sweeps both: the gateway that made "dead" never comes back.
    assert (await limiter.reserve("y", plan, "k", Charge(30), timeout_s=10, now=NOON + 41)).admitted
    assert await state(limiter, plan, NOON + 41) == {"tokens/day": (0, 30)}
    # "slow" outlived its hold (a long stream): its settle still charges what it used, once.
    assert await limiter.settle(plan, "slow", Charge(25)) is Settlement.LATE
    assert await limiter.settle(plan, "slow", Charge(25)) is Settlement.NONE
    assert await limiter.release(plan, "dead") is Settlement.LATE  # nothing left to give back
    assert await state(limiter, plan, NOON + 42) == {"tokens/day": (25, 30)}


async def test_extend_with_a_timeout_keeps_a_long_stream_held(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}]})
    await limiter.reserve("stream", plan, "k", Charge(60), timeout_s=10, now=NOON)
    assert await limiter.extend(plan, "stream", Charge(60), timeout_s=10, now=NOON + 35)
    assert await state(limiter, plan, NOON + 70) == {"tokens/day": (0, 60)}  # held to +75
    assert await state(limiter, plan, NOON + 76) == {"tokens/day": (0, 0)}
    assert not await limiter.extend(plan, "stream", Charge(60), timeout_s=10, now=NOON + 77)


async def test_a_replayed_reserve_changes_nothing(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}], "limits": {"rpm": 9}})
    await limiter.reserve("r1", plan, "k", Charge(40), timeout_s=60, now=NOON)
    again = await limiter.reserve("r1", plan, "k", Charge(40), timeout_s=60, now=NOON)
    assert again.admitted and again.replayed
    assert await state(limiter, plan, NOON) == {"tokens/day": (0, 40), "rpm": (1, 0)}


async def test_windows_roll_over_at_midnight_and_a_settle_lands_where_it_reserved(
    limiter: Limiter,
) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}]})
    before = MIDNIGHT - 1
    await limiter.reserve("r1", plan, "k", Charge(100), timeout_s=60, now=before)
    assert not (
        await limiter.reserve("r2", plan, "k", Charge(1), timeout_s=60, now=before)
    ).admitted
    # A new day is a new counter: nothing to reset, nothing to race.
    assert (
        await limiter.reserve("r3", plan, "k", Charge(100), timeout_s=60, now=MIDNIGHT)
    ).admitted
    await limiter.settle(plan, "r1", Charge(70))  # settled after midnight: charged to yesterday
    assert await state(limiter, plan, before) == {"tokens/day": (70, 0)}
    assert await state(limiter, plan, MIDNIGHT) == {"tokens/day": (0, 100)}


@pytest.mark.parametrize(
    ("window", "last_moment", "next_window"),
    [
        (
            "hour",
            datetime(2026, 11, 26, 12, 59, 59, tzinfo=UTC),
            datetime(2026, 11, 26, 13, tzinfo=UTC),
        ),
        (
            "week",
            datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 11, 30, tzinfo=UTC),
        ),
        (
            "month",
            datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
        ),
    ],
)
async def test_every_window_kind_rolls_over_on_its_utc_boundary(
    limiter: Limiter, window: str, last_moment: datetime, next_window: datetime
) -> None:
    plan = plan_of({"budgets": [{"tokens": 10, "window": window}]})
    last, first = last_moment.timestamp(), next_window.timestamp()
    assert (await limiter.reserve("a", plan, "k", Charge(10), timeout_s=60, now=last)).admitted
    refused = await limiter.reserve("b", plan, "k", Charge(10), timeout_s=60, now=last)
    assert refused.refusal is not None and refused.refusal.retry_after_s == 1
    assert (await limiter.reserve("c", plan, "k", Charge(10), timeout_s=60, now=first)).admitted


async def test_a_cache_hit_counts_toward_rpm_without_a_reservation(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}], "limits": {"rpm": 2}})
    assert (await limiter.count_hit(plan, "k", now=NOON)).admitted
    charged = await limiter.count_hit(plan, "k", Charge(30), now=NOON)
    assert charged.admitted
    assert charged.headers()["x-ratelimit-remaining-requests"] == "0"
    assert await state(limiter, plan, NOON) == {"tokens/day": (30, 0), "rpm": (2, 0)}
    over = await limiter.count_hit(plan, "k", now=NOON)
    assert over.refusal is not None and over.refusal.error_type == "rate_limit_exceeded"
    assert await state(limiter, plan, NOON) == {"tokens/day": (30, 0), "rpm": (2, 0)}


async def test_charge_adds_unreserved_usage_without_a_check(limiter: Limiter) -> None:
    plan = plan_of({"budgets": [{"tokens": 100, "window": "day"}], "limits": {"rpm": 1}})
    await limiter.count_hit(plan, "k", now=NOON)
    await limiter.charge(plan, "k", Charge(250), now=NOON)  # served under fail_open
    assert await state(limiter, plan, NOON) == {"tokens/day": (250, 0), "rpm": (1, 0)}


async def test_a_team_without_limits_is_admitted_without_counting(limiter: Limiter) -> None:
    plan = plan_of({})
    assert plan.unlimited
    admission = await limiter.reserve("r1", plan, "k", Charge(10**9), timeout_s=60, now=NOON)
    assert admission.admitted and admission.headers() == {}
    assert await limiter.settle(plan, "r1", Charge(5)) is Settlement.NONE
    assert await limiter.snapshot(plan, "k", now=NOON) == []


async def test_teams_are_counted_apart(limiter: Limiter) -> None:
    spec = {"budgets": [{"tokens": 10, "window": "day"}]}
    search, ads = plan_of(spec, "search"), plan_of(spec, "ads")
    assert (await limiter.reserve("r1", search, "k", Charge(10), timeout_s=60, now=NOON)).admitted
    assert (await limiter.reserve("r1", ads, "k", Charge(10), timeout_s=60, now=NOON)).admitted
    assert await limiter.settle(search, "r1", Charge(3)) is Settlement.DONE
    assert await state(limiter, ads, NOON) == {"tokens/day": (0, 10)}


async def test_snapshot_shows_key_rows_only_for_a_key(limiter: Limiter) -> None:
    plan = plan_of(
        {"budgets": [{"tokens": 10, "window": "day"}], "keys_budget": {"usd": 2, "window": "month"}}
    )
    await limiter.reserve("r1", plan, "k1", Charge(4, NANO), timeout_s=60, now=NOON)
    team_only = await limiter.snapshot(plan, now=NOON)
    assert [w.spec.name for w in team_only] == ["tokens/day"]
    rows = [w.as_dict() for w in await limiter.snapshot(plan, "k1", now=NOON)]
    assert rows[1] == {
        "limit": "key usd/month",
        "scope": "key k1",
        "unit": "usd",
        "window": "month",
        "window_start": "2026-11-01T00:00:00Z",
        "resets_at": "2026-12-01T00:00:00Z",
        "limit_value": 2.0,
        "used": 0.0,
        "reserved": 1.0,
        "remaining": 1.0,
    }


async def test_every_redis_key_expires_and_carries_the_team_hash_tag(
    redis_url: str, redis_prefix: str
) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        limiter = RedisLimiter(client, redis_prefix)
        plan = plan_of(
            {
                "budgets": [{"tokens": 100, "window": "week"}],
                "limits": {"rpm": 5, "tpm": 100},
                "keys_budget": {"usd": 1, "window": "month"},
            }
        )
        await limiter.reserve("r1", plan, "static:ab12", Charge(10, 10), timeout_s=60, now=NOON)
        await limiter.reserve("r2", plan, "static:ab12", Charge(10, 10), timeout_s=60, now=NOON)
        await limiter.settle(plan, "r1", Charge(5, 5))
        keys = sorted([key async for key in client.scan_iter(match=f"{redis_prefix}*")])
        base = f"{redis_prefix}{{team:search}}:b:"
        assert keys == sorted(
            base + suffix
            for suffix in (
                "exp",
                "res",
                "tokens:week:2026W48",
                "rpm:202611261200",
                "tpm:202611261200",
                "key:static:ab12:usd:month:202611",
            )
        )
        life = 3600 + 3600 + 60  # max hold + late settle + a minute, after the window ends
        for key in keys:
            ttl = await client.ttl(key)
            if key.endswith(":rpm:202611261200"):
                assert 60 + life - 2 <= ttl <= 60 + life
            elif key.endswith("tokens:week:2026W48"):
                # From Thursday noon to Monday 00:00 is 3 days and 12 hours.
                assert 3.5 * 86400 + life - 2 <= ttl <= 3.5 * 86400 + life
            else:
                assert ttl > 3600, key
        # The decode_responses client works too (replies arrive as str).
        assert (await limiter.count_hit(plan, "static:ab12", now=NOON)).admitted
    finally:
        await client.aclose()


async def test_a_key_only_plan_without_a_key_counts_nothing(limiter: Limiter) -> None:
    plan = plan_of({"keys_budget": {"tokens": 10, "window": "day"}})
    assert (await limiter.count_hit(plan, None, Charge(50), now=NOON)).admitted
    assert (await limiter.reserve("r1", plan, None, Charge(50), timeout_s=9, now=NOON)).admitted
    assert await limiter.settle(plan, "r1", Charge(50)) is Settlement.DONE
    assert await limiter.snapshot(plan, now=NOON) == []
    refused = await limiter.reserve("r2", plan, "k", Charge(50), timeout_s=9, now=NOON)
    assert refused.refusal is not None and refused.refusal.spec.scope == "key"
