"""Spend reports, views and ``tollgate spend`` against seeded data, checked by hand-computed sums.

The seed goes through the real writer (so the daily roll-up is the writer's), on Postgres and
SQLite. Every expected number below was added up by hand from the SEED table.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from gateway.cli import spend as spend_cli
from gateway.db.engine import create_engine
from gateway.db.migrate import upgrade
from gateway.ledger.queries import SpendQueries, SpendRow, format_usd
from gateway.ledger.writer import LedgerWriter
from tests.support.services import PostgresServer


def at(text_ts: str) -> float:
    return datetime.fromisoformat(text_ts).replace(tzinfo=UTC).timestamp()


# id, ts (UTC), team, key, route, deployment, status, prompt, completion, cached, cost, saved, tags
SEED: list[tuple[Any, ...]] = [
    ("s1", "2026-11-01T10:00:00", "search", "key_a", "chat", "gpt-4o", "ok", 100, 50, 40,
     0.0015, 0, {"feature": "search", "env": "prod"}),
    ("s2", "2026-11-01T23:59:59", "search", "key_b", "chat", "llama", "ok", 200, 100, 0,
     0.0002, 0, {"feature": "ads"}),
    ("s3", "2026-11-02T00:00:00", "search", "key_a", "chat", "gpt-4o", "upstream_error", 300, 0, 0,
     0, 0, None),
    ("s4", "2026-11-02T12:00:00", "search", "key_a", "embed", "embed-small", "ok", 1000, 0, 0,
     0.00002, 0, None),
    ("s5", "2026-11-03T08:00:00", "search", "key_b", "chat", "gpt-4o", "ok", 10, 20, 0,
     0.1234567891, 0, {"env": "prod"}),
    ("s9", "2026-11-03T09:00:00", "search", "key_a", "chat", None, "cache_hit", 100, 20, 0,
     0, 0.0033, None),
    # Outside the range 2026-11-01 .. 2026-11-03:
    ("s6", "2026-10-31T23:59:59", "search", "key_a", "chat", "gpt-4o", "ok", 5, 5, 0,
     1.0, 0, None),
    ("s7", "2026-11-04T00:00:00", "search", "key_a", "chat", "gpt-4o", "ok", 5, 5, 0,
     2.0, 0, None),
    # Another team: never in search's reports.
    ("a8", "2026-11-02T15:00:00", "ads", "key_c", "chat", "gpt-4o", "ok", 7, 3, 0,
     5.0, 0, {"feature": "search"}),
]  # fmt: skip

# route slo-route on 2026-11-05: TTFTs 10, 20, 30, 40 and one untimed; slo_met T, T, F, None, F.
SLO_SEED = [(10.0, True), (20.0, True), (30.0, False), (40.0, None), (None, False)]

SINCE, UNTIL = date(2026, 11, 1), date(2026, 11, 3)


def row(group: str, n: int, p: int, c: int, cached: int, usd: str, saved: str = "0") -> SpendRow:
    return SpendRow(group, n, p, c, cached, Decimal(usd), Decimal(saved))


TOTAL = row("total", 6, 1710, 190, 40, "0.1251767891", "0.0033")

EXPECTED: dict[str, list[SpendRow]] = {
    "day": [
        row("2026-11-01", 2, 300, 150, 40, "0.0017"),
        row("2026-11-02", 2, 1300, 0, 0, "0.00002"),
        row("2026-11-03", 2, 110, 40, 0, "0.1234567891", "0.0033"),
    ],
    "model": [
        row("gpt-4o", 3, 410, 70, 40, "0.1249567891"),
        row("llama", 1, 200, 100, 0, "0.0002"),
        row("embed-small", 1, 1000, 0, 0, "0.00002"),
        row("(none)", 1, 100, 20, 0, "0", "0.0033"),
    ],
    "key": [
        row("key_b", 2, 210, 120, 0, "0.1236567891"),
        row("key_a", 4, 1500, 70, 40, "0.00152", "0.0033"),
    ],
    "route": [
        row("chat", 5, 710, 190, 40, "0.1251567891", "0.0033"),
        row("embed", 1, 1000, 0, 0, "0.00002"),
    ],
    "status": [
        row("ok", 4, 1310, 170, 40, "0.1251767891"),
        row("cache_hit", 1, 100, 20, 0, "0", "0.0033"),
        row("upstream_error", 1, 300, 0, 0, "0"),
    ],
    "tag": [
        row("env=prod", 2, 110, 70, 40, "0.1249567891"),
        row("feature=search", 1, 100, 50, 40, "0.0015"),
        row("feature=ads", 1, 200, 100, 0, "0.0002"),
        row("(untagged)", 3, 1400, 20, 0, "0.00002", "0.0033"),
    ],
}
BY_FEATURE = [
    row("(untagged)", 4, 1410, 40, 0, "0.1234767891", "0.0033"),
    row("search", 1, 100, 50, 40, "0.0015"),
    row("ads", 1, 200, 100, 0, "0.0002"),
]


def seed_rows() -> list[dict[str, Any]]:
    rows = []
    for rid, ts, team, key, route, dep, status, p, c, cached, usd, saved, tags in SEED:
        rows.append(
            {
                "request_id": rid,
                "ts": at(ts),
                "team": team,
                "key_id": key,
                "route": route,
                "deployment": dep,
                "status": status,
                "http_status": 502 if status == "upstream_error" else 200,
                "prompt_tokens": p,
                "completion_tokens": c,
                "cached_tokens": cached,
                "cost_usd": usd,
                "cost_saved_usd": saved,
                "tags": tags,
                "attempts": 1,
            }
        )
    for i, (ttft, slo_met) in enumerate(SLO_SEED):
        rows.append(
            {
                "request_id": f"slo-{i}",
                "ts": at(f"2026-11-05T0{i}:00:00"),
                "team": "slo-team",
                "route": "slo-route",
                "status": "ok",
                "ttft_ms": ttft,
                "slo_met": slo_met,
            }
        )
    return rows


async def seed(url: str, spool: Path) -> None:
    await upgrade(url)
    async with LedgerWriter(spool, url, "seed", flush_interval_s=0.02) as writer:
        for item in seed_rows():
            writer.append(item)
        await asyncio.wait_for(writer.flush(), 30)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def seeded(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A database holding SEED, shared by this module's tests (they only read)."""
    base = tmp_path_factory.mktemp("ledger-queries")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{base / 'ledger.db'}"
        asyncio.run(seed(url, base / "spool"))
        yield url
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.temporary_database() as url:
        asyncio.run(seed(url, base / "spool"))
        yield url


def exact(rows: list[SpendRow]) -> list[SpendRow]:
    """Amounts normalised so Decimal('0.0017000000') equals Decimal('0.0017')."""
    return [
        SpendRow(
            r.group,
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_tokens,
            r.cost_usd.normalize(),
            r.cost_saved_usd.normalize(),
        )
        for r in rows
    ]


async def report(url: str, **kwargs: Any) -> Any:
    engine = create_engine(url)
    try:
        return await SpendQueries(engine).spend(**kwargs)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("by", list(EXPECTED))
async def test_spend_by_each_grouping_matches_hand_sums(seeded: str, by: str) -> None:
    found = await report(seeded, team="search", since=SINCE, until=UNTIL, by=by)
    assert exact(found.rows) == exact(EXPECTED[by])
    assert exact([found.total]) == exact([TOTAL])


async def test_spend_by_one_tag_key(seeded: str) -> None:
    found = await report(
        seeded, team="search", since=SINCE, until=UNTIL, by="tag", tag_key="feature"
    )
    assert exact(found.rows) == exact(BY_FEATURE)
    assert found.as_json()["rows"][0]["feature"] == "(untagged)"


async def test_range_bounds_are_whole_utc_days(seeded: str) -> None:
    one_day = await report(seeded, team="search", since=date(2026, 11, 4), until=date(2026, 11, 4))
    assert exact(one_day.rows) == exact([row("2026-11-04", 1, 5, 5, 0, "2.0")])
    by_tag = await report(
        seeded, team="search", since=date(2026, 10, 31), until=date(2026, 10, 31), by="tag"
    )
    assert exact(by_tag.rows) == exact([row("(untagged)", 1, 5, 5, 0, "1.0")])


async def test_a_team_never_sees_another_teams_spend(seeded: str) -> None:
    for by in EXPECTED:
        found = await report(seeded, team="ads", since=SINCE, until=UNTIL, by=by)
        assert found.total.requests == 1
        assert found.total.cost_usd == Decimal("5")
    everyone = await report(seeded, team=None, since=SINCE, until=UNTIL, by="day")
    assert exact(everyone.rows)[1] == exact([row("2026-11-02", 3, 1307, 3, 0, "5.00002")])[0]


async def test_window_sums_for_reconcile(seeded: str) -> None:
    engine = create_engine(seeded)
    try:
        queries = SpendQueries(engine)
        start = datetime(2026, 11, 2, tzinfo=UTC)
        end = datetime(2026, 11, 3, 9, tzinfo=UTC)  # s9 at 09:00 is outside: the end is open
        assert await queries.window_sums("search", "key_a", start, end) == (
            1300,
            Decimal("0.00002"),
        )
        tokens, usd = await queries.window_sums("search", None, start, end)
        assert (tokens, usd.normalize()) == (1330, Decimal("0.1234767891"))
        ok_only = await queries.window_sums("search", "key_a", start, end, statuses=["ok"])
        assert ok_only == (1000, Decimal("0.00002"))
        assert await queries.window_sums("nobody", None, start, end) == (0, Decimal(0))
    finally:
        await engine.dispose()


async def test_views_finance_queries_directly(seeded: str) -> None:
    engine = create_engine(seeded)
    try:
        async with engine.connect() as conn:
            team_days = (
                await conn.execute(
                    text(
                        "SELECT day, requests, prompt_tokens, cost_usd FROM team_spend_daily "
                        "WHERE team = 'search' ORDER BY day"
                    )
                )
            ).all()
            models = (
                await conn.execute(
                    text(
                        "SELECT deployment, SUM(cost_usd) AS usd FROM model_spend_daily "
                        "WHERE team = 'search' AND day BETWEEN '2026-11-01' AND '2026-11-03' "
                        "GROUP BY deployment ORDER BY usd DESC"
                    )
                )
            ).all()
            keys = (
                await conn.execute(
                    text(
                        "SELECT key_id, SUM(requests) AS n FROM key_spend_daily "
                        "WHERE team = 'search' GROUP BY key_id ORDER BY key_id"
                    )
                )
            ).all()
            slo = (
                await conn.execute(
                    text(
                        "SELECT requests, slo_met_requests, goodput, ttft_p50_ms, ttft_p95_ms "
                        "FROM slo_daily WHERE route = 'slo-route'"
                    )
                )
            ).one()
            postgres = conn.dialect.name == "postgresql"
    finally:
        await engine.dispose()

    # Postgres sums exactly; SQLite's views sum doubles (0.0017000000000000001): round to scale.
    def usd(value: Any) -> Decimal:
        return round(Decimal(str(value)), 10).normalize()

    assert [(str(d), n, p, usd(cost)) for d, n, p, cost in team_days] == [
        ("2026-10-31", 1, 5, Decimal("1")),
        ("2026-11-01", 2, 300, Decimal("0.0017")),
        ("2026-11-02", 2, 1300, Decimal("0.00002")),
        ("2026-11-03", 2, 110, Decimal("0.1234567891")),
        ("2026-11-04", 1, 5, Decimal("2")),
    ]
    assert [(d, usd(cost)) for d, cost in models] == [
        ("gpt-4o", Decimal("0.1249567891")),
        ("llama", Decimal("0.0002")),
        ("embed-small", Decimal("0.00002")),
        (None, Decimal("0")),
    ]
    assert [(k, int(n)) for k, n in keys] == [("key_a", 6), ("key_b", 2)]
    requests, met, goodput, p50, p95 = slo
    assert (requests, met) == (5, 2)
    assert goodput == pytest.approx(2 / 4)  # judged: T, T, F, F (one NULL is not judged)
    if postgres:  # interpolated
        assert (p50, p95) == (pytest.approx(25.0), pytest.approx(38.5))
    else:  # nearest rank: the 2nd and the 4th of 4 timed requests
        assert (p50, p95) == (20.0, 40.0)


def run_cli(url: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="tollgate")
    spend_cli.register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["spend", "--database-url", url, *args])
    code = parsed.run(parsed)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_matches_hand_sums(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--team", "search", "--since", "2026-11-01", "--until", "2026-11-03", "--by", "model")
    code, out, _ = run_cli(seeded, *args, "--format", "json", capsys=capsys)
    assert code == 0
    data = orjson.loads(out)
    assert data["by"] == "model" and data["team"] == "search"
    assert data["rows"] == [r.as_dict("model") for r in EXPECTED["model"]]
    assert data["total"] == TOTAL.as_dict("model")
    assert data["rows"][0]["cost_usd"] == "0.1249567891"  # every digit, as text


def test_cli_csv_and_table(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--team", "search", "--since", "2026-11-01", "--until", "2026-11-03", "--by", "key")
    code, out, _ = run_cli(seeded, *args, "--format", "csv", capsys=capsys)
    assert code == 0
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [(r["key"], r["requests"], r["cost_usd"]) for r in parsed] == [
        ("key_b", "2", "0.1236567891"),
        ("key_a", "4", "0.00152"),
        ("TOTAL", "6", "0.1251767891"),
    ]

    code, out, _ = run_cli(seeded, *args, capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "key",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "cost_saved_usd",
    ]
    assert lines[1].split() == ["key_b", "2", "210", "120", "0", "0.1236567891", "0.00"]
    assert lines[-1].split() == ["TOTAL", "6", "1710", "190", "40", "0.1251767891", "0.0033"]


def test_cli_tag_and_errors(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--team", "search", "--since", "2026-11-01", "--until", "2026-11-03")
    code, out, _ = run_cli(seeded, *args, "--by", "tag", "--tag", "feature", "--format", "json",
                           capsys=capsys)  # fmt: skip
    assert code == 0
    assert [r["feature"] for r in orjson.loads(out)["rows"]] == ["(untagged)", "search", "ads"]

    code, _, err = run_cli(seeded, *args, "--tag", "feature", capsys=capsys)
    assert code == 2 and "--by tag" in err
    code, _, err = run_cli(seeded, "--since", "2026-11-03", "--until", "2026-11-01", capsys=capsys)
    assert code == 2 and "before" in err


def test_cli_on_a_database_without_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    code, out, err = run_cli(url, "--since", "2026-11-01", capsys=capsys)
    assert code == 1
    assert out == ""
    assert "tollgate migrate" in err


def test_format_usd() -> None:
    assert format_usd(Decimal("1.5")) == "1.50"
    assert format_usd(Decimal("0E-10")) == "0.00"
    assert format_usd(Decimal("0.1234567891")) == "0.1234567891"
    assert format_usd(Decimal("12.3400000000")) == "12.34"
