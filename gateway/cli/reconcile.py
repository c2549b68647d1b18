"""``tollgate reconcile``: budget counters against the ledger, for the current windows.

The budget (Redis) is charged by settlements; the ledger (the database) records the same usage
row by row. They should agree for every team budget's current window. Drift means usage that one
side saw and the other did not: a Redis restart without persistence (counters start again at
zero), a settle lost while Redis was away, or rows still waiting in a gateway's spool.

Exit status: 0 when everything agrees, 1 when any window drifts (or on errors).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.budget import NO_REDIS
from gateway.cli.output import FORMATS, emit, load_policy_or_report, policy_dir
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.policy.schema import Policy

# Cache hits are not charged (unless a route counts them) and refusals never are.
CHARGED = ("ok", "upstream_error", "client_disconnect", "error")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "reconcile", help="compare budget counters with ledger sums and report drift"
    )
    parser.add_argument("--team", help="only this team (default: every team with a budget)")
    parser.add_argument("--policy", type=Path, help="policy directory (default: $TOLLGATE_POLICY)")
    parser.add_argument("--redis-url", help="Redis URL (default: $TOLLGATE_REDIS_URL)")
    parser.add_argument("--database-url", help="database URL (default: $TOLLGATE_DATABASE_URL)")
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    redis_url: str | None = args.redis_url or settings.redis_url
    if not redis_url:
        print(f"error: {NO_REDIS}", file=sys.stderr)
        return 1
    directory = policy_dir(args.policy, settings)
    policy = load_policy_or_report(directory)
    if policy is None:
        return 1
    teams = [args.team] if args.team else list(policy.document.teams)
    database_url = args.database_url or settings.resolved_database_url()
    try:
        rows = asyncio.run(_compare(redis_url, settings.redis_prefix, database_url, policy, teams))
    except (ConnectionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    emit(rows, args.format)
    drifting = [row for row in rows if row["drift"] != 0]
    if drifting:
        print(f"{len(drifting)} window(s) drift", file=sys.stderr)
    return 1 if drifting else 0


async def _compare(
    redis_url: str, prefix: str, database_url: str, policy: Policy, teams: list[str]
) -> list[dict[str, Any]]:
    import redis.asyncio as aioredis

    from gateway.budget import PlanCache, RedisLimiter, fail_fast_options
    from gateway.db.engine import create_engine
    from gateway.ledger.queries import SpendQueries

    client = aioredis.from_url(redis_url, **fail_fast_options(2.0))
    engine = create_engine(database_url)
    plans = PlanCache()
    rows: list[dict[str, Any]] = []
    try:
        limiter = RedisLimiter(client, prefix)
        ledger = SpendQueries(engine)
        for team in teams:
            for window in await limiter.snapshot(plans.get(policy, team)):
                spec = window.spec
                if spec.kind != "budget" or window.key_id is not None:
                    continue
                start = datetime.fromtimestamp(window.window_start, UTC)
                end = datetime.fromtimestamp(window.window_end, UTC)
                sums = await ledger.window_sums(team, None, start, end, statuses=CHARGED)
                shown = window.as_dict()
                if spec.unit == "usd":
                    ledger_used: Any = sums.usd.quantize(Decimal("0.000000001"))
                    budget_used: Any = Decimal(window.used) / Decimal(1_000_000_000)
                else:
                    ledger_used, budget_used = sums.tokens, window.used
                rows.append(
                    {
                        "team": team,
                        "limit": shown["limit"],
                        "window_start": shown["window_start"],
                        "budget_used": budget_used,
                        "reserved": shown["reserved"],
                        "ledger_used": ledger_used,
                        "drift": budget_used - ledger_used,
                    }
                )
    finally:
        await client.aclose()
        await engine.dispose()
    return rows
