"""Spend and budget reports: the caller's own under /v1/tollgate, any team's under /admin.

A key of team A only ever sees team A: the team comes from the key, never from the query.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from gateway.api.deps import admin, principal, services
from gateway.auth.resolver import Principal
from gateway.errors import InvalidRequest, NotFound
from gateway.ledger.queries import GROUPINGS

own = APIRouter(prefix="/v1/tollgate")
operators = APIRouter(prefix="/admin", dependencies=[Depends(admin)])
Caller = Annotated[Principal, Depends(principal)]


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data, default=str), media_type="application/json")


def _day(request: Request, name: str, default: date) -> date:
    text = request.query_params.get(name)
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"Invalid '{name}': expected a date (YYYY-MM-DD).", param=name
        ) from None


async def _spend(request: Request, team: str | None) -> Response:
    today = datetime.now(UTC).date()
    since = _day(request, "since", today.replace(day=1))
    until = _day(request, "until", today)
    by = request.query_params.get("by", "day")
    if by not in GROUPINGS:
        raise InvalidRequest(f"Invalid 'by': expected one of {', '.join(GROUPINGS)}.", param="by")
    report = await services(request).spend.spend(
        team=team, since=since, until=until, by=by, tag_key=request.query_params.get("tag")
    )
    return _json(report.as_json())


async def _budget(request: Request, team: str, key_id: str | None) -> Response:
    found = services(request)
    policy = found.policies.current
    if policy.team(team) is None:
        raise NotFound(f"Unknown team '{team}'.", code="unknown_team")
    plan = found.pipeline.plans.get(policy, team)
    states = await found.limiter.snapshot(plan, key_id)
    return _json({"team": team, "windows": [state.as_dict() for state in states]})


@own.get("/spend")
async def own_spend(request: Request, caller: Caller) -> Response:
    return await _spend(request, caller.team)


@own.get("/budget")
async def own_budget(request: Request, caller: Caller) -> Response:
    return await _budget(request, caller.team, caller.key_id)


@operators.get("/spend")
async def any_spend(request: Request) -> Response:
    return await _spend(request, request.query_params.get("team") or None)


@operators.get("/teams/{team}/budget")
async def team_budget(team: str, request: Request) -> Response:
    return await _budget(request, team, request.query_params.get("key_id"))
