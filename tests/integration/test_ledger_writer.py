"""The ledger writer against real Postgres and SQLite: complete, exact, idempotent, durable.

The fault tests use a throwaway Postgres (stopped for 30 s under load) and a child process
killed with SIGKILL; the shared servers are never touched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from sqlalchemy import select, text

from gateway.db.engine import create_engine
from gateway.db.migrate import migrations_dir, upgrade
from gateway.ledger.models import UsageLedger
from gateway.ledger.writer import LedgerWriter
from gateway.record import RequestRecord
from tests.support.services import ThrowawayPostgres, free_port
from tests.unit.test_ledger_rows import OUTCOMES, record

ROOT = migrations_dir().parent


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_db(request: pytest.FixtureRequest) -> str:
    """An empty database of this test's own, migrated to head, on each backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    await upgrade(url)
    return url


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
async def writer(spool_dir: Path, ledger_db: str) -> AsyncIterator[LedgerWriter]:
    async with LedgerWriter(spool_dir, ledger_db, "test", flush_interval_s=0.02) as started:
        yield started


async def query(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text(sql), params)
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


async def ledger_rows(url: str, team: str | None = None) -> dict[str, dict[str, Any]]:
    """Every ledger row (of ``team``), typed by the model (aware datetimes, decimals)."""
    table = UsageLedger.__table__
    statement = select(table) if team is None else select(table).where(table.c.team == team)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = [dict(row._mapping) for row in await conn.execute(statement)]
    finally:
        await engine.dispose()
    return {row["request_id"]: row for row in rows}


async def daily_totals(url: str, team: str) -> tuple[int, Decimal]:
    (row,) = await query(
        url,
        "SELECT SUM(requests) AS n, SUM(cost_usd) AS usd FROM usage_daily WHERE team = :team",
        team=team,
    )
    return int(row["n"] or 0), Decimal(str(row["usd"] or 0))


def event(request_id: str, team: str = "load", cost: float = 0.000125) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "ts": time.time(),
        "team": team,
        "key_id": "key_load",
        "route": "chat",
        "deployment": "sim-chat",
        "status": "ok",
        "http_status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "cost_usd": cost,
        "attempts": 1,
    }


def spool_files(directory: Path, pattern: str = "*") -> list[Path]:
    return sorted(directory.glob(pattern))


def as_decimal(value: Any) -> Decimal:
    """A stored amount as an exact decimal (SQLite hands back floats)."""
    return value if isinstance(value, Decimal) else round(Decimal(repr(value)), 10)


async def test_every_outcome_is_exactly_one_row_with_its_numbers(
    writer: LedgerWriter, ledger_db: str
) -> None:
    records: dict[str, tuple[RequestRecord, str]] = {}
    for i, (status, fields, expected) in enumerate(OUTCOMES):
        rec = record(request_id=f"outcome-{i}", status=status, **fields)
        rec.started = time.perf_counter()
        assert writer.append_record(rec) is True
        records[rec.request_id] = (rec, expected)
    anonymous = record(request_id="anonymous", team=None, key_id=None, http_status=401)
    assert writer.append_record(anonymous) is False

    await asyncio.wait_for(writer.flush(), 30)

    stored = await ledger_rows(ledger_db)
    assert set(stored) == set(records)  # one row each, none for the unauthenticated request
    for request_id, (rec, expected) in records.items():
        row = stored[request_id]
        assert row["status"] == expected
        for name in ("team", "key_id", "route", "requested_model", "deployment", "provider"):
            assert row[name] == getattr(rec, name), (request_id, name)
        for name in ("replica", "http_status", "error_type", "prompt_tokens"):
            assert row[name] == getattr(rec, name), (request_id, name)
        for name in ("completion_tokens", "cached_tokens", "attempts", "end_user"):
            assert row[name] == getattr(rec, name), (request_id, name)
        assert bool(row["stream"]) is rec.stream
        assert row["slo_met"] == rec.slo_met
        assert as_decimal(row["cost_usd"]) == Decimal(repr(rec.cost_usd))
        assert as_decimal(row["cost_saved_usd"]) == Decimal(repr(rec.cost_saved_usd))
        assert row["ttft_ms"] == (None if rec.ttft_ms is None else round(rec.ttft_ms, 3))

    by_status = await query(
        ledger_db,
        "SELECT status, SUM(requests) AS n, SUM(prompt_tokens) AS p FROM usage_daily "
        "GROUP BY status",
    )
    expected_counts: dict[str, int] = {}
    expected_prompt: dict[str, int] = {}
    for rec, status in records.values():
        expected_counts[status] = expected_counts.get(status, 0) + 1
        expected_prompt[status] = expected_prompt.get(status, 0) + rec.prompt_tokens
    assert {row["status"]: int(row["n"]) for row in by_status} == expected_counts
    assert {row["status"]: int(row["p"]) for row in by_status} == expected_prompt
    assert writer.rows_inserted == len(records)
    assert writer.backlog_rows == 0


async def test_duplicate_appends_of_one_request_make_one_row(
    writer: LedgerWriter, ledger_db: str
) -> None:
    writer.append(event("dup-1", team="dup", cost=0.5))
    writer.append(event("dup-1", team="dup", cost=0.7))  # same batch
    await asyncio.wait_for(writer.flush(), 30)
    writer.append(event("dup-1", team="dup", cost=0.9))  # a later batch
    writer.append(event("dup-2", team="dup", cost=0.25))
    await asyncio.wait_for(writer.flush(), 30)

    stored = await ledger_rows(ledger_db, "dup")
    assert sorted(stored) == ["dup-1", "dup-2"]
    assert as_decimal(stored["dup-1"]["cost_usd"]) == Decimal("0.5")  # the first one wins
    assert await daily_totals(ledger_db, "dup") == (2, Decimal("0.75"))
    assert writer.rows_inserted == 2


async def test_the_same_rows_from_two_writers_are_counted_once(
    tmp_path: Path, ledger_db: str
) -> None:
    # What a replay looks like to the database: rows it may already have.
    async with (
        LedgerWriter(tmp_path / "a", ledger_db, "a", flush_interval_s=0.02) as first,
        LedgerWriter(tmp_path / "b", ledger_db, "b", flush_interval_s=0.02) as second,
    ):
        for i in range(300):
            first.append(event(f"both-{i}", team="both"))
            second.append(event(f"both-{i}", team="both"))
        await asyncio.gather(first.flush(), second.flush())
        assert first.rows_inserted + second.rows_inserted == 300

    assert len(await ledger_rows(ledger_db, "both")) == 300
    assert await daily_totals(ledger_db, "both") == (300, Decimal("0.0375"))


async def test_bad_rows_are_set_aside_and_the_rest_still_inserted(
    writer: LedgerWriter, ledger_db: str, spool_dir: Path
) -> None:
    for i in range(20):
        writer.append(event(f"good-{i}", team="mixed"))
        if i == 5:
            writer.append({"request_id": "no-team", "ts": time.time()})
        if i == 9 and ledger_db.startswith("postgresql"):
            # SQLite stores anything; Postgres refuses a smallint out of range (DataError).
            writer.append({**event("too-big", team="mixed"), "http_status": 70_000})
    await asyncio.wait_for(writer.flush(), 30)

    stored = await ledger_rows(ledger_db, "mixed")
    assert sorted(stored) == sorted(f"good-{i}" for i in range(20))
    rejected = [
        orjson.loads(line) for line in (spool_dir / "rejected.jsonl").read_bytes().splitlines()
    ]
    expected = 2 if ledger_db.startswith("postgresql") else 1
    assert writer.rows_rejected == len(rejected) == expected
    assert await daily_totals(ledger_db, "mixed") == (20, Decimal("0.0025"))


async def test_sparse_and_oversized_rows_are_completed_and_clipped(
    writer: LedgerWriter, ledger_db: str
) -> None:
    # append() takes any JSON-native dict; both backends fill defaults and clip the same way.
    writer.append({"request_id": "sparse", "ts": 1_795_000_000.25, "team": "raw", "tags": {}})
    writer.append(
        {
            **event("long", team="raw"),
            "end_user": "u" * 1000,
            "requested_model": "m" * 1000,
            "cost_usd": "0.0000000001",  # decimal text is taken as is
        }
    )
    await asyncio.wait_for(writer.flush(), 30)

    stored = await ledger_rows(ledger_db, "raw")
    sparse = stored["sparse"]
    assert sparse["ts"].timestamp() == 1_795_000_000.25
    assert (sparse["status"], sparse["http_status"], sparse["attempts"]) == ("ok", 0, 0)
    assert (sparse["prompt_tokens"], sparse["completion_tokens"], sparse["cached_tokens"]) == (
        0,
        0,
        0,
    )
    assert as_decimal(sparse["cost_usd"]) == 0
    assert not sparse["stream"]
    assert sparse["tags"] is None and sparse["slo_met"] is None and sparse["key_id"] is None
    long = stored["long"]
    assert (len(long["end_user"]), len(long["requested_model"])) == (256, 256)
    assert as_decimal(long["cost_usd"]) == Decimal("0.0000000001")
    assert await daily_totals(ledger_db, "raw") == (2, Decimal("0.0000000001"))


async def test_close_drains_everything_then_removes_the_spool(
    spool_dir: Path, ledger_db: str
) -> None:
    writer = LedgerWriter(spool_dir, ledger_db, "closing", batch_rows=100)
    await writer.start()
    for i in range(1234):  # no await in between: all of it is still spooled at close
        writer.append(event(f"close-{i}", team="closing"))
    assert writer.backlog_rows == 1234
    await asyncio.wait_for(writer.aclose(), 60)

    assert len(await ledger_rows(ledger_db, "closing")) == 1234
    assert await daily_totals(ledger_db, "closing") == (1234, Decimal("0.154250"))
    assert spool_files(spool_dir) == []
    with pytest.raises(RuntimeError, match="not running"):
        writer.append(event("late"))


async def test_rows_a_writer_could_not_deliver_are_replayed_by_the_next_one(
    spool_dir: Path, ledger_db: str
) -> None:
    nowhere = (
        f"sqlite+aiosqlite:///{spool_dir.parent / 'missing' / 'no-tables.db'}"
        if ledger_db.startswith("sqlite")
        else f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres"
    )
    stranded = LedgerWriter(
        spool_dir, nowhere, "stranded", flush_interval_s=0.02, drain_timeout_s=0.5
    )
    await stranded.start()
    for i in range(300):
        stranded.append(event(f"replay-{i}", team="replay"))
    await asyncio.sleep(0.3)
    # The backlog is on disk; memory holds one batch at most.
    assert stranded.backlog_rows == 300
    assert 0 < stranded.inflight_rows <= 500
    assert stranded.database_down_s > 0
    assert stranded.lag_seconds > 0
    await stranded.aclose()
    assert spool_files(spool_dir, "*.seg")  # left for a replay

    async with LedgerWriter(spool_dir, ledger_db, "next", flush_interval_s=0.02) as successor:
        await asyncio.wait_for(successor.flush(orphans=True), 30)
        assert successor.rows_replayed == 300
    assert len(await ledger_rows(ledger_db, "replay")) == 300
    assert await daily_totals(ledger_db, "replay") == (300, Decimal("0.0375"))
    assert spool_files(spool_dir, "*.seg") == []


async def test_throughput_into_the_database(spool_dir: Path, ledger_db: str) -> None:
    rows = 20_000
    async with LedgerWriter(spool_dir, ledger_db, "bench") as writer:
        for i in range(rows):
            writer.append(event(f"bench-{i}", team="bench"))
        started = time.perf_counter()
        await asyncio.wait_for(writer.flush(), 120)
        elapsed = time.perf_counter() - started
    backend = ledger_db.split(":", 1)[0]
    print(
        f"\nledger writer: {rows} rows into {backend} in {elapsed:.2f} s = {rows / elapsed:.0f}/s"
    )
    assert await daily_totals(ledger_db, "bench") == (rows, Decimal("2.5"))


# --- fault injection ---------------------------------------------------------------------------


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as server:
        yield server


async def test_postgres_stopped_for_30s_mid_load_loses_and_duplicates_nothing(
    throwaway_postgres: ThrowawayPostgres, spool_dir: Path
) -> None:
    url = throwaway_postgres.url
    await upgrade(url)
    writer = LedgerWriter(spool_dir, url, "outage", flush_interval_s=0.05, retry_max_s=1.0)
    await writer.start()
    try:
        for i in range(700):
            writer.append(event(f"outage-{i}", team="outage"))
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(writer.flush(), 60)

        await asyncio.to_thread(throwaway_postgres.stop)
        down_at = time.monotonic()
        for i in range(700, 1300):  # 600 requests over 30 s while the database is away
            writer.append(event(f"outage-{i}", team="outage"))
            await asyncio.sleep(0.05)
            assert writer.inflight_rows <= 500  # the backlog is on disk, not in memory
        assert writer.backlog_rows == 600
        assert writer.database_down_s > 0
        down_s = time.monotonic() - down_at
        print(f"\npostgres down for {down_s:.1f} s, lag {writer.lag_seconds:.1f} s")
        await asyncio.to_thread(throwaway_postgres.start)

        for i in range(1300, 2000):
            writer.append(event(f"outage-{i}", team="outage"))
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(writer.flush(), 120)
    finally:
        await writer.aclose()

    (row,) = await query(
        url,
        "SELECT COUNT(*) AS n, COUNT(DISTINCT request_id) AS ids, SUM(cost_usd) AS usd, "
        "SUM(prompt_tokens) AS p FROM usage_ledger WHERE team = 'outage'",
    )
    assert (row["n"], row["ids"], row["usd"], row["p"]) == (2000, 2000, Decimal("0.25"), 20_000)
    assert await daily_totals(url, "outage") == (2000, Decimal("0.25"))
    assert spool_files(spool_dir) == []


def _appender(spool: Path, url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.ledger_appender", str(spool), url, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _read_until(stream: IO[str], stop: str | int) -> list[str]:
    """Lines until one equals ``stop`` (or ``stop`` lines were read)."""
    seen: list[str] = []
    for line in stream:
        seen.append(line.strip())
        if seen[-1] == stop or len(seen) == stop:
            return seen
    raise AssertionError(f"the appender ended early after {len(seen)} lines")


def _kill(process: subprocess.Popen[str]) -> list[str]:
    """SIGKILL, then the lines it printed before dying (requests that got their answer)."""
    process.send_signal(signal.SIGKILL)
    assert process.stdout is not None
    rest = [line.strip() for line in process.stdout]
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    return rest


async def test_sigkill_mid_load_loses_no_answered_request(
    spool_dir: Path, fresh_postgres_url: str
) -> None:
    url = fresh_postgres_url
    await upgrade(url)
    # A slow flush leaves hundreds of answered rows only in the spool when the kill comes.
    process = _appender(
        spool_dir, url, "--count", "1000", "--prefix", "killed", "--flush-interval-s", "0.5"
    )
    try:
        assert process.stdout is not None
        answered = await asyncio.to_thread(_read_until, process.stdout, 500)
    finally:
        answered += _kill(process)
    assert 500 <= len(answered) < 1000

    async with LedgerWriter(spool_dir, url, "sibling", flush_interval_s=0.02) as sibling:
        await asyncio.wait_for(sibling.flush(orphans=True), 60)
        replayed = sibling.rows_replayed

    stored = await ledger_rows(url, "crash-team")
    missing = set(answered) - set(stored)
    assert not missing, f"{len(missing)} answered requests have no ledger row"
    assert len(stored) <= 1000
    # The roll-up agrees with the rows, whichever of them the dead writer got in itself.
    count, usd = await daily_totals(url, "crash-team")
    assert count == len(stored)
    assert usd == Decimal("0.000125") * len(stored)
    print(f"\nkilled after {len(answered)} answers; {replayed} spooled rows replayed")
    assert spool_files(spool_dir, "*.seg") == []


async def test_a_replay_of_rows_already_inserted_counts_nothing_twice(
    spool_dir: Path, fresh_postgres_url: str
) -> None:
    # The dead writer inserted everything but its offset says nothing was: the worst case.
    url = fresh_postgres_url
    await upgrade(url)
    process = _appender(spool_dir, url, "--count", "200", "--interval-ms", "0", "--stale-offset")
    try:
        assert process.stdout is not None
        lines = await asyncio.to_thread(_read_until, process.stdout, "stale")
    finally:
        _kill(process)
    assert len(lines) == 201

    async with LedgerWriter(spool_dir, url, "sibling", flush_interval_s=0.02) as sibling:
        await asyncio.wait_for(sibling.flush(orphans=True), 60)
        assert sibling.rows_replayed == 200
        assert sibling.rows_inserted == 0

    assert len(await ledger_rows(url, "crash-team")) == 200
    assert await daily_totals(url, "crash-team") == (200, Decimal("0.025"))
