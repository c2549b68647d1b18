"""The daily roll-up computed from a batch, and how insert failures are classified."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError

from gateway.ledger.inserts import refused_for_content, roll_up
from gateway.ledger.rows import to_params


def params(request_id: str, ts: str, **fields: Any) -> dict[str, Any]:
    moment = datetime.fromisoformat(ts).replace(tzinfo=UTC).timestamp()
    return to_params({"request_id": request_id, "team": "search", "ts": moment, **fields})


def test_roll_up_sums_per_day_and_dimensions() -> None:
    rows = [
        params("a", "2026-11-01T10:00:00", key_id="k1", route="chat", deployment="gpt",
               prompt_tokens=10, completion_tokens=5, cached_tokens=2, cost_usd=0.1),
        params("b", "2026-11-01T23:59:59", key_id="k1", route="chat", deployment="gpt",
               prompt_tokens=20, completion_tokens=1, cost_usd=0.2, cost_saved_usd=0.05),
        params("c", "2026-11-02T00:00:00", key_id="k1", route="chat", deployment="gpt",
               prompt_tokens=1, cost_usd=0.3),
        params("d", "2026-11-01T12:00:00", route="chat", status="rejected_budget"),
    ]  # fmt: skip

    daily = roll_up(rows)

    assert daily == [
        {
            "team": "search", "day": date(2026, 11, 1), "key_id": "", "route": "chat",
            "deployment": "", "status": "rejected_budget", "requests": 1, "prompt_tokens": 0,
            "completion_tokens": 0, "cached_tokens": 0, "cost_usd": Decimal(0),
            "cost_saved_usd": Decimal(0),
        },
        {
            "team": "search", "day": date(2026, 11, 1), "key_id": "k1", "route": "chat",
            "deployment": "gpt", "status": "ok", "requests": 2, "prompt_tokens": 30,
            "completion_tokens": 6, "cached_tokens": 2, "cost_usd": Decimal("0.3"),
            "cost_saved_usd": Decimal("0.05"),
        },
        {
            "team": "search", "day": date(2026, 11, 2), "key_id": "k1", "route": "chat",
            "deployment": "gpt", "status": "ok", "requests": 1, "prompt_tokens": 1,
            "completion_tokens": 0, "cached_tokens": 0, "cost_usd": Decimal("0.3"),
            "cost_saved_usd": Decimal(0),
        },
    ]  # fmt: skip
    # Exact: 0.1 + 0.2 is 0.3 here, not 0.30000000000000004.
    assert daily[1]["cost_usd"] == Decimal("0.3")


def test_roll_up_of_nothing_is_empty() -> None:
    assert roll_up([]) == []


class _DriverError(Exception):
    def __init__(self, sqlstate: str | None = None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


def test_content_errors_are_told_apart_from_outages() -> None:
    def wrapped(kind: type[StatementError], orig: BaseException) -> StatementError:
        return kind("INSERT ...", {}, orig)

    assert refused_for_content(wrapped(DataError, _DriverError()))
    assert refused_for_content(wrapped(IntegrityError, _DriverError()))
    assert refused_for_content(StatementError("bind failed", "INSERT ...", {}, ValueError("x")))
    assert refused_for_content(wrapped(OperationalError, _DriverError("22003")))  # out of range
    client_side = _DriverError()
    client_side.__cause__ = ValueError("value out of int16 range")
    assert refused_for_content(wrapped(OperationalError, client_side))

    assert not refused_for_content(wrapped(OperationalError, _DriverError("57P01")))  # shutdown
    assert not refused_for_content(wrapped(OperationalError, _DriverError("42P01")))  # no table
    assert not refused_for_content(wrapped(OperationalError, ConnectionResetError()))
