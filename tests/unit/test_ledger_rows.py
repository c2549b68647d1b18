"""Ledger rows built from request records: one row per outcome, with the right numbers."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from gateway.ledger.models import LIMITS
from gateway.ledger.rows import COLUMNS, MAX_TAGS, day_of, ledger_row, parse_tags, to_params
from gateway.record import RequestRecord

NOW = 1_795_000_000.0  # 2026-11-18T08:26:40Z


def record(**fields: Any) -> RequestRecord:
    """A record as the request path leaves it (``built`` sets when it arrived)."""
    base: dict[str, Any] = {
        "team": "search",
        "key_id": "key_0123456789abcdef",
        "route": "chat",
        "requested_model": "chat",
        "method": "POST",
        "path": "/v1/chat/completions",
    }
    base.update(fields)
    return RequestRecord(request_id=base.pop("request_id", "req_1"), started=0.0, **base)


def built(rec: RequestRecord, age_s: float = 0.5) -> dict[str, Any]:
    rec.started = time.perf_counter() - age_s
    row = ledger_row(rec, now=NOW)
    assert row is not None
    return row


# (status as the pipeline leaves it, record fields, expected ledger status)
OUTCOMES: list[tuple[str, dict[str, Any], str]] = [
    (
        "ok",
        dict(
            deployment="gpt-4o-mini",
            provider="openai",
            replica="api.openai.com",
            http_status=200,
            prompt_tokens=1200,
            completion_tokens=300,
            cached_tokens=1024,
            cost_usd=0.000318,
            attempts=1,
            ttft_ms=180.1234,
            total_ms=950.5,
            slo_met=True,
        ),
        "ok",
    ),
    (
        "upstream_error",
        dict(
            deployment="llama-pool",
            provider="vllm",
            replica="10.0.0.7:8000",
            http_status=502,
            error_type="upstream_timeout",
            prompt_tokens=55,
            attempts=3,
            total_ms=30000.0,
            slo_met=False,
        ),
        "upstream_error",
    ),
    (
        "upstream_client_error",
        dict(
            deployment="gpt-4o-mini", provider="openai", http_status=400, error_type="upstream_400"
        ),
        "upstream_client_error",
    ),
    (
        "rejected_budget",
        dict(http_status=429, error_type="budget_exceeded", prompt_tokens=800),
        "rejected_budget",
    ),
    (
        "rejected_rate",
        dict(http_status=429, error_type="rate_limit_exceeded"),
        "rejected_rate",
    ),
    (
        "invalid_request",
        dict(
            route=None,
            requested_model="no-such-model",
            http_status=404,
            error_type="model_not_found",
        ),
        "invalid_request",
    ),
    (
        "client_disconnect",
        dict(
            deployment="gpt-4o-mini",
            provider="openai",
            http_status=200,
            stream=True,
            prompt_tokens=40,
            completion_tokens=12,
            cost_usd=0.0000132,
            error_type="client_disconnect",
            ttft_ms=90.0,
            total_ms=400.0,
        ),
        "client_disconnect",
    ),
    (
        "ok",
        dict(
            cache="hit",
            http_status=200,
            prompt_tokens=40,
            completion_tokens=12,
            cost_saved_usd=0.0021,
        ),
        "cache_hit",
    ),
    (
        "unauthorized",
        dict(route=None, http_status=403, error_type="permission_denied"),
        "unauthorized",
    ),
    ("error", dict(http_status=500, error_type="internal_error"), "error"),
    ("ok", dict(http_status=503, error_type="service_unavailable"), "error"),
]


@pytest.mark.parametrize(("status", "fields", "expected"), OUTCOMES)
def test_every_outcome_makes_one_row_with_its_numbers(
    status: str, fields: dict[str, Any], expected: str
) -> None:
    rec = record(status=status, **fields)
    row = built(rec)

    assert set(row) == set(COLUMNS)
    assert row["status"] == expected
    for name in (
        "request_id",
        "team",
        "key_id",
        "route",
        "requested_model",
        "deployment",
        "provider",
        "replica",
        "http_status",
        "error_type",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "cost_saved_usd",
        "attempts",
        "stream",
        "end_user",
        "slo_met",
    ):
        assert row[name] == getattr(rec, name), name
    assert row["ttft_ms"] == (None if rec.ttft_ms is None else round(rec.ttft_ms, 3))
    assert row["total_ms"] == (None if rec.total_ms is None else round(rec.total_ms, 3))
    # The row is what gets spooled: it must survive JSON unchanged.
    assert orjson.loads(orjson.dumps(row)) == row

    params = to_params(orjson.loads(orjson.dumps(row)))
    assert params["cost_usd"] == Decimal(repr(rec.cost_usd))
    assert params["cost_saved_usd"] == Decimal(repr(rec.cost_saved_usd))
    assert params["status"] == expected


def test_exact_dollars_through_the_spool() -> None:
    row = built(record(cost_usd=0.1 + 0.2, cost_saved_usd=0.0000001))
    params = to_params(orjson.loads(orjson.dumps(row)))
    assert params["cost_usd"] == Decimal("0.30000000000000004")
    assert params["cost_saved_usd"] == Decimal("1e-7")


def test_unauthenticated_requests_have_no_row() -> None:
    assert ledger_row(record(team=None, key_id=None, http_status=401), now=NOW) is None


def test_ts_is_when_the_request_arrived_in_utc() -> None:
    row = built(record(), age_s=2.0)
    assert row["ts"] == pytest.approx(NOW - 2.0, abs=0.05)
    params = to_params(row)
    assert params["ts"].tzinfo is UTC
    assert params["ts"] == datetime.fromtimestamp(row["ts"], UTC)
    assert day_of(params) == date(2026, 11, 18)


def test_day_is_the_utc_day_at_midnight_boundaries() -> None:
    just_before = datetime(2026, 11, 1, 23, 59, 59, 999999, tzinfo=UTC).timestamp()
    midnight = datetime(2026, 11, 2, tzinfo=UTC).timestamp()
    base = {"request_id": "r", "team": "t"}
    assert day_of(to_params({**base, "ts": just_before})) == date(2026, 11, 1)
    assert day_of(to_params({**base, "ts": midnight})) == date(2026, 11, 2)


def test_client_supplied_strings_are_clipped_to_the_columns() -> None:
    row = built(
        record(
            request_id="r" * 500,
            requested_model="m" * 1000,
            end_user="u" * 1000,
            replica="h" * 1000,
            error_type="e" * 100,
        )
    )
    for name in ("request_id", "requested_model", "end_user", "replica", "error_type"):
        assert len(row[name]) == LIMITS[name], name


def test_tags_are_kept_and_bounded() -> None:
    row = built(record(tags={"feature": "search", "env": "prod"}))
    assert row["tags"] == {"feature": "search", "env": "prod"}
    assert built(record())["tags"] is None  # no tags: SQL NULL, not {}

    many = {f"k{i}": "v" * 1000 for i in range(100)}
    clipped = built(record(tags=many))["tags"]
    assert len(clipped) == MAX_TAGS
    assert all(len(value) == 256 for value in clipped.values())


def test_parse_tags_header() -> None:
    assert parse_tags("feature=search, env=prod") == {"feature": "search", "env": "prod"}
    assert parse_tags("feature=search,broken,=novalue,empty=") == {"feature": "search", "empty": ""}
    assert parse_tags("") == {}
    assert parse_tags(None) == {}
    assert len(parse_tags(",".join(f"k{i}=v" for i in range(100)))) == MAX_TAGS


def test_to_params_fills_defaults_for_a_sparse_row() -> None:
    params = to_params({"request_id": "r1", "team": "t", "ts": NOW})
    assert set(params) == set(COLUMNS)
    assert params["status"] == "ok"
    assert params["prompt_tokens"] == params["completion_tokens"] == params["attempts"] == 0
    assert params["cost_usd"] == Decimal(0)
    assert params["stream"] is False
    assert params["slo_met"] is None
    assert params["tags"] is None
    assert params["key_id"] is None


@pytest.mark.parametrize(
    "row",
    [
        {"team": "t", "ts": NOW},
        {"request_id": "r", "ts": NOW},
        {"request_id": "", "team": "t", "ts": NOW},
        {"request_id": "r", "team": "t"},
        {"request_id": "r", "team": "t", "ts": "yesterday"},
    ],
)
def test_to_params_refuses_rows_that_cannot_be_ledger_rows(row: dict[str, Any]) -> None:
    with pytest.raises((KeyError, ValueError, TypeError)):
        to_params(row)
