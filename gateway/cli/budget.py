"""``tollgate budget show TEAM``: a team's budgets and limits in their current windows.

Reads the policy (for the limits) and the shared Redis at ``TOLLGATE_REDIS_URL`` (for used and
reserved). Without Redis the gateway keeps this state inside its own process, where only the
running gateway can show it (``GET /v1/tollgate/budget``, ``GET /admin/teams/TEAM/budget``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from gateway.cli.output import FORMATS, emit, load_policy_or_report, policy_dir
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.policy.schema import Policy

NO_REDIS = (
    "TOLLGATE_REDIS_URL is not set. Without Redis the gateway keeps budget state inside its own "
    "process, so only the running gateway can show it: GET /v1/tollgate/budget (with one of the "
    "team's keys) or GET /admin/teams/TEAM/budget (with the admin key)."
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``budget`` and its actions to the ``tollgate`` parser."""
    parser = commands.add_parser("budget", help="show a team's budgets and rate limits")
    actions = parser.add_subparsers(dest="budget_action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", help="used, reserved and remaining per window (from the shared Redis)"
    )
    show.add_argument("team", metavar="TEAM", help="the team, as named in the policy")
    show.add_argument("--key", metavar="KEY_ID", help="also show this key's own budget")
    show.add_argument(
        "--policy", type=Path, help="policy directory (default: $TOLLGATE_POLICY, else policies/)"
    )
    show.add_argument("--redis-url", help="Redis URL (default: $TOLLGATE_REDIS_URL)")
    show.add_argument("--format", choices=FORMATS, default="table")
    show.set_defaults(run=run_show)


def run_show(args: argparse.Namespace) -> int:
    """Print one row per limit: its window, limit, used, reserved and remaining."""
    settings = Settings()
    url: str | None = args.redis_url or settings.redis_url
    if not url:
        return _fail(NO_REDIS)
    directory = policy_dir(args.policy, settings)
    policy = load_policy_or_report(directory)
    if policy is None:
        return 1
    if policy.team(args.team) is None:
        return _fail(f"team {args.team!r} is not defined in the policy at {directory}")
    try:
        rows = asyncio.run(_snapshot(url, settings.redis_prefix, policy, args.team, args.key))
    except ConnectionError as exc:
        return _fail(str(exc))
    if not rows:
        print(f"team {args.team!r} has no budgets or rate limits", file=sys.stderr)
    emit(rows, args.format)
    return 0


async def _snapshot(
    url: str, prefix: str, policy: Policy, team: str, key_id: str | None
) -> list[dict[str, Any]]:
    # Imported here so `tollgate --help` and the other commands stay quick to start.
    import redis.asyncio as aioredis

    from gateway.budget import BudgetUnavailable, PlanCache, RedisLimiter
    from gateway.budget.redis_limiter import fail_fast_options

    client = aioredis.from_url(url, **fail_fast_options(2.0))
    try:
        limiter = RedisLimiter(client, prefix)
        plan = PlanCache().get(policy, team)
        windows = await limiter.snapshot(plan, key_id)
    except BudgetUnavailable as exc:
        raise ConnectionError(f"cannot reach Redis at {_redact(url)}: {exc.__cause__}") from exc
    finally:
        await client.aclose()
    return [window.as_dict() for window in windows]


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
