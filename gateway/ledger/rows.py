"""Ledger rows: built from a :class:`~gateway.record.RequestRecord`, spooled as JSON, inserted.

A row is a plain dict of JSON-native values (``ts`` in epoch seconds, dollars as floats), because
it is serialised on the request path and must cost microseconds. Off the hot path,
:func:`normalize` checks and completes a spooled row, and :func:`to_params` types it for an
insert through SQLAlchemy (an aware datetime, exact decimals).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.ledger.models import LIMITS
from gateway.record import RequestRecord

__all__ = [
    "COLUMNS",
    "MAX_TAGS",
    "day_of",
    "ledger_row",
    "normalize",
    "parse_tags",
    "to_params",
]

# Every column of usage_ledger, in table order.
COLUMNS = (
    "request_id",
    "ts",
    "team",
    "key_id",
    "route",
    "requested_model",
    "deployment",
    "provider",
    "replica",
    "status",
    "http_status",
    "error_type",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_saved_usd",
    "ttft_ms",
    "total_ms",
    "attempts",
    "stream",
    "end_user",
    "tags",
    "slo_met",
    "client_request_id",
)

MAX_TAGS = 32
_TAG_KEY_CHARS = 64
_TAG_VALUE_CHARS = 256
_OPTIONAL_TEXT = (
    "key_id",
    "route",
    "requested_model",
    "deployment",
    "provider",
    "replica",
    "error_type",
    "end_user",
    "client_request_id",
)


def ledger_row(record: RequestRecord, *, now: float | None = None) -> dict[str, Any] | None:
    """The ledger row for a finished request, or ``None`` if it has no team to charge.

    Unauthenticated requests (no team) belong to metrics only. ``ts`` is the wall-clock time the
    request arrived (``now`` minus its age). ``status`` is the record's, except that a request
    answered with an error status but still marked ``ok`` is recorded as ``error``, and a cache
    hit as ``cache_hit``.
    """
    team = record.team
    if team is None:
        return None
    wall = time.time() if now is None else now
    status = record.status
    if status == "ok":
        if record.http_status >= 400:
            status = "error"
        elif record.cache == "hit":
            status = "cache_hit"
    ttft, total = record.ttft_ms, record.total_ms
    return {
        "request_id": _clip(record.request_id, "request_id"),
        "ts": round(wall - (time.perf_counter() - record.started), 6),
        "team": _clip(team, "team"),
        "key_id": _clip(record.key_id, "key_id"),
        "route": _clip(record.route, "route"),
        "requested_model": _clip(record.requested_model, "requested_model"),
        "deployment": _clip(record.deployment, "deployment"),
        "provider": _clip(record.provider, "provider"),
        "replica": _clip(record.replica, "replica"),
        "status": _clip(status, "status"),
        "http_status": record.http_status,
        "error_type": _clip(record.error_type, "error_type"),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "cost_usd": record.cost_usd,
        "cost_saved_usd": record.cost_saved_usd,
        "ttft_ms": None if ttft is None else round(ttft, 3),
        "total_ms": None if total is None else round(total, 3),
        "attempts": record.attempts,
        "stream": record.stream,
        "end_user": _clip(record.end_user, "end_user"),
        "tags": _tags(record.tags) if record.tags else None,
        "slo_met": record.slo_met,
        "client_request_id": _clip(record.client_request_id, "client_request_id"),
    }


def parse_tags(header: str | None) -> dict[str, str]:
    """``x-tollgate-tags: feature=search,env=prod`` as a dict; malformed pairs are dropped."""
    if not header:
        return {}
    tags: dict[str, str] = {}
    for pair in header.split(","):
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if sep and key and len(tags) < MAX_TAGS:
            tags[key[:_TAG_KEY_CHARS]] = value[:_TAG_VALUE_CHARS]
    return tags


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """A spooled row checked and completed: every column, clipped, still JSON-native.

    ``ts`` is epoch seconds, dollars are decimal text (``"0.000339"``: exact, and cheap to
    hand to Postgres). Raises ``KeyError``/``TypeError``/``ValueError``/``AttributeError`` for
    a row that cannot be a ledger row (no request id, team or timestamp, a non-number where a
    number belongs); the writer sets such rows aside.
    """
    get = row.get
    out = {column: get(column) for column in COLUMNS}
    for column in _OPTIONAL_TEXT:
        value = out[column]
        if value is not None:
            value = value if type(value) is str else str(value)
            out[column] = value if len(value) <= LIMITS[column] else value[: LIMITS[column]]
    out["request_id"] = _required_text(row["request_id"], "request_id")
    out["team"] = _required_text(row["team"], "team")
    ts = float(row["ts"])
    if not math.isfinite(ts):
        raise ValueError(f"ts {ts} is not a time")
    out["ts"] = ts
    out["status"] = str(get("status") or "ok")[: LIMITS["status"]]
    out["http_status"] = int(get("http_status") or 0)
    for column in ("prompt_tokens", "completion_tokens", "cached_tokens", "attempts"):
        out[column] = int(get(column) or 0)
    for column in ("ttft_ms", "total_ms"):
        value = out[column]
        if value is not None:
            out[column] = float(value)
    out["cost_usd"] = _dollars(get("cost_usd"))
    out["cost_saved_usd"] = _dollars(get("cost_saved_usd"))
    out["stream"] = bool(get("stream"))
    slo_met = out["slo_met"]
    if slo_met is not None:
        out["slo_met"] = bool(slo_met)
    tags = out["tags"]
    out["tags"] = _tags(tags) if isinstance(tags, dict) and tags else None
    return out


def to_params(row: dict[str, Any]) -> dict[str, Any]:
    """The insert parameters for a spooled row, typed for SQLAlchemy (datetime, Decimal).

    Raises like :func:`normalize`.
    """
    params = normalize(row)
    params["ts"] = datetime.fromtimestamp(params["ts"], UTC)
    params["cost_usd"] = Decimal(params["cost_usd"])
    params["cost_saved_usd"] = Decimal(params["cost_saved_usd"])
    return params


def day_of(params: dict[str, Any]) -> date:
    """The UTC day of a row from :func:`to_params` (what the roll-up and the views group by)."""
    ts: datetime = params["ts"]
    return ts.date()  # ts is already in UTC


def _dollars(value: Any) -> str:
    if value is None:
        return "0"
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"{value} is not an amount")
        # The shortest repr, so 0.1 stays 0.1 instead of 0.1000000000000000055...
        return repr(value)
    if isinstance(value, bool):
        raise TypeError("a boolean is not an amount")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount") from None
    if not amount.is_finite():
        raise ValueError(f"{value} is not an amount")
    return str(amount)


def _required_text(value: Any, column: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a ledger row needs a non-empty {column}")
    return value[: LIMITS[column]]


def _clip(value: str | None, column: str) -> str | None:
    if value is None:
        return None
    limit = LIMITS[column]
    return value if len(value) <= limit else value[:limit]


def _tags(tags: dict[str, Any]) -> dict[str, str]:
    clipped: dict[str, str] = {}
    for key, value in tags.items():
        if len(clipped) >= MAX_TAGS:
            break
        clipped[str(key)[:_TAG_KEY_CHARS]] = str(value)[:_TAG_VALUE_CHARS]
    return clipped
