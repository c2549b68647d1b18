"""API keys against real Postgres and SQLite: the store, and the resolver on the request path.

The resolver tests use fake clocks (time is what they are about) but always a real database;
database queries are counted with a SQLAlchemy event listener.
"""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth.demo import ensure_demo_key
from gateway.auth.keys import KeyRecord, generate_key, hash_key, parse_duration
from gateway.auth.resolver import KeyResolver, Principal
from gateway.auth.store import KeyStore
from gateway.db.engine import create_engine, session_factory
from gateway.db.migrate import upgrade
from gateway.errors import AuthenticationFailed, ServiceUnavailable
from gateway.policy.schema import Policy, PolicyDocument
from tests.support.services import ThrowawayPostgres

STATIC_KEY = "tg-static-key-for-the-resolver-tests"


def policy(*teams: str, static: dict[str, str] | None = None) -> Policy:
    """A policy with ``teams`` (and static keys: plaintext -> team)."""
    spec: dict[str, Any] = {name: {} for name in teams}
    for key, team in (static or {}).items():
        spec.setdefault(team, {}).setdefault("keys", []).append("sha256:" + hash_key(key))
    return Policy(PolicyDocument.model_validate({"teams": spec}), sources=())


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Db:
    engine: AsyncEngine
    store: KeyStore
    statements: list[str] = field(default_factory=list)

    def key_lookups(self) -> int:
        """How many SELECTs on api_keys have run so far."""
        return sum(1 for s in self.statements if s.lstrip().upper().startswith("SELECT"))

    async def raw_rows(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(text("SELECT * FROM api_keys"))
            return [dict(row) for row in result.mappings()]


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[Db]:
    url: str = request.getfixturevalue(
        "sqlite_url" if request.param == "sqlite" else "postgres_url"
    )
    await upgrade(url)
    engine = create_engine(url)
    found = Db(engine, KeyStore(session_factory(engine)))

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "api_keys" in statement:
            found.statements.append(statement)

    yield found
    await engine.dispose()


def team_name() -> str:
    # The Postgres database is shared by the session's tests: a team of this test's own.
    return "team-" + generate_key()[3:11].lower().replace("_", "x").replace("-", "x")


# --- the store --------------------------------------------------------------------------------


async def test_create_returns_the_key_once_and_stores_only_its_hash(db: Db) -> None:
    team = team_name()
    plaintext, record = await db.store.create(team, name="search-app")

    assert plaintext.startswith("tg-") and len(plaintext) == 35
    assert record.prefix == plaintext[:11]
    assert record.id.startswith("key_") and len(record.id) == 20
    assert (record.team, record.name, record.status) == (team, "search-app", "active")
    assert record.created_at.tzinfo is not None and record.expires_at is None
    assert not hasattr(record, "key_hash")
    (row,) = [r for r in await db.raw_rows() if r["id"] == record.id]
    assert row["key_hash"] == hash_key(plaintext)
    assert plaintext not in {str(value) for value in row.values()}


async def test_list_filters_by_team_oldest_first(db: Db) -> None:
    team, other = team_name(), team_name()
    _, first = await db.store.create(team, name="one")
    _, second = await db.store.create(team, name="two")
    await db.store.create(other)

    assert [r.id for r in await db.store.list(team)] == [first.id, second.id]
    everything = {r.id for r in await db.store.list()}
    assert {first.id, second.id} < everything


async def test_revoke_by_id_or_prefix(db: Db) -> None:
    team = team_name()
    _, by_id = await db.store.create(team)
    _, by_prefix = await db.store.create(team)

    revoked = await db.store.revoke(by_id.id)
    assert revoked.status == "revoked" and revoked.revoked_at is not None
    assert (await db.store.revoke(by_prefix.prefix)).id == by_prefix.id
    assert {r.status for r in await db.store.list(team)} == {"revoked"}

    # Revoking again keeps the original time.
    again = await db.store.revoke(by_id.id)
    assert again.revoked_at == revoked.revoked_at


async def test_revoke_unknown_or_ambiguous_is_a_lookup_error(db: Db) -> None:
    team = team_name()
    with pytest.raises(LookupError, match="no API key"):
        await db.store.revoke("key_0000000000000000")
    shared = "tg-" + team[-8:]
    await db.store.ensure_key(team, shared + "-first-key-with-this-prefix")
    await db.store.ensure_key(team, shared + "-second-key-with-this-prefix")
    with pytest.raises(LookupError, match="prefix of 2 keys"):
        await db.store.revoke(shared)


async def test_expiry(db: Db) -> None:
    team = team_name()
    _, lasting = await db.store.create(team, expires_in=parse_duration("30d"))
    assert lasting.status == "active"
    assert lasting.expires_at == lasting.created_at + timedelta(days=30)

    past = datetime.now(UTC) - timedelta(days=2)
    backdated = KeyStore(session_factory(db.engine), now=lambda: past)
    _, expired = await backdated.create(team, expires_in=timedelta(days=1))
    assert expired.status == "expired"

    stored = {r.id: r for r in await db.store.list(team)}
    assert stored[lasting.id].status == "active"
    assert stored[expired.id].status == "expired"
    assert stored[expired.id].expires_at == past + timedelta(days=1)
    assert stored[expired.id].expires_at.tzinfo == UTC  # type: ignore[union-attr]

    with pytest.raises(ValueError, match="positive"):
        await db.store.create(team, expires_in=timedelta(0))


async def test_ensure_key_inserts_once(db: Db) -> None:
    team = team_name()
    plaintext = generate_key()
    first = await db.store.ensure_key(team, plaintext, name="demo")
    again = await db.store.ensure_key("another-team", plaintext, name="other")

    assert again == first
    assert await db.store.find_by_hash(hash_key(plaintext)) == first
    assert await db.store.find_by_hash(hash_key("tg-no-such-key")) is None
    with pytest.raises(ValueError, match="at least"):
        await db.store.ensure_key(team, "tg-short")


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("3600s") == timedelta(hours=1)
    for junk in ("", "30", "d", "1.5h", "-1d", "10y", "0d", "30 days"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(junk)


def test_key_record_status_prefers_revoked() -> None:
    now = datetime.now(UTC)
    record = KeyRecord("key_1", "t", None, "tg-x", now, now - timedelta(1), now)
    assert record.status == "revoked"


# --- the resolver -----------------------------------------------------------------------------


async def test_missing_key(db: Db) -> None:
    resolver = KeyResolver(db.store, ttl_s=5)
    for missing in (None, ""):
        with pytest.raises(AuthenticationFailed, match="Missing API key") as raised:
            await resolver.resolve(missing, policy("t"))
        assert raised.value.status == 401


async def test_static_policy_key_needs_no_database(db: Db) -> None:
    resolver = KeyResolver(db.store, ttl_s=5)
    found = await resolver.resolve(STATIC_KEY, policy(static={STATIC_KEY: "ops"}))

    assert found == Principal("ops", "static:" + hash_key(STATIC_KEY)[:8], None)
    assert db.key_lookups() == 0


async def test_database_key(db: Db) -> None:
    team = team_name()
    plaintext, record = await db.store.create(team, name="app")
    resolver = KeyResolver(db.store, ttl_s=5)

    assert await resolver.resolve(plaintext, policy(team)) == Principal(team, record.id, "app")


async def test_unknown_key(db: Db) -> None:
    resolver = KeyResolver(db.store, ttl_s=5)
    with pytest.raises(AuthenticationFailed) as raised:
        await resolver.resolve("tg-not-a-real-key", policy("t"))
    assert raised.value.message == "Incorrect API key provided."
    assert "tg-not" not in str(raised.value)


async def test_revocation_takes_effect_after_the_ttl(db: Db) -> None:
    team = team_name()
    plaintext, record = await db.store.create(team)
    clock = FakeClock(100.0)
    resolver = KeyResolver(db.store, ttl_s=5, clock=clock)
    current = policy(team)
    await resolver.resolve(plaintext, current)

    await db.store.revoke(record.id)
    clock.advance(4.9)
    assert (await resolver.resolve(plaintext, current)).key_id == record.id  # still cached

    clock.advance(0.2)
    with pytest.raises(AuthenticationFailed, match="has been revoked"):
        await resolver.resolve(plaintext, current)


async def test_a_key_in_use_is_refreshed_ahead_without_waiting(db: Db) -> None:
    """Past 3/4 of the ttl, a request is answered from the cache while the lookup runs in the
    background; its answer (here: revoked) applies from then on, before the old deadline."""
    team = team_name()
    plaintext, record = await db.store.create(team)
    clock = FakeClock(100.0)
    resolver = KeyResolver(db.store, ttl_s=5, clock=clock)
    current = policy(team)
    await resolver.resolve(plaintext, current)
    await db.store.revoke(record.id)
    before = db.key_lookups()

    clock.advance(4.0)
    assert (await resolver.resolve(plaintext, current)).key_id == record.id
    assert db.key_lookups() == before  # answered without waiting for the query it started
    for _ in range(500):
        if db.key_lookups() == before + 1:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the refreshed entry is stored when its task completes
    with pytest.raises(AuthenticationFailed, match="has been revoked"):
        await resolver.resolve(plaintext, current)
    assert db.key_lookups() == before + 1


async def test_expiry_takes_effect_at_once_even_when_cached(db: Db) -> None:
    team = team_name()
    plaintext, _ = await db.store.create(team, expires_in=timedelta(hours=1))
    wall = FakeClock(time.time())
    resolver = KeyResolver(db.store, ttl_s=3600, wall_clock=wall)
    current = policy(team)
    await resolver.resolve(plaintext, current)
    lookups = db.key_lookups()

    wall.advance(3601)
    with pytest.raises(AuthenticationFailed, match="has expired"):
        await resolver.resolve(plaintext, current)
    assert db.key_lookups() == lookups


async def test_key_of_a_team_gone_from_the_policy(db: Db) -> None:
    team = team_name()
    plaintext, _ = await db.store.create(team)
    resolver = KeyResolver(db.store, ttl_s=5)

    await resolver.resolve(plaintext, policy(team))
    with pytest.raises(AuthenticationFailed, match="team is not in the current policy"):
        await resolver.resolve(plaintext, policy("someone-else"))


async def test_bad_keys_are_cached_too(db: Db) -> None:
    clock = FakeClock(0.0)
    resolver = KeyResolver(db.store, ttl_s=5, clock=clock)
    current = policy("t")

    for _ in range(50):
        with pytest.raises(AuthenticationFailed):
            await resolver.resolve("tg-flooding-bad-key", current)
    assert db.key_lookups() == 1

    clock.advance(5)
    with pytest.raises(AuthenticationFailed):
        await resolver.resolve("tg-flooding-bad-key", current)
    assert db.key_lookups() == 2


async def test_a_key_created_after_a_miss_works_after_the_ttl(db: Db) -> None:
    team = team_name()
    plaintext = generate_key()
    clock = FakeClock(0.0)
    resolver = KeyResolver(db.store, ttl_s=5, clock=clock)
    with pytest.raises(AuthenticationFailed):
        await resolver.resolve(plaintext, policy(team))

    await db.store.ensure_key(team, plaintext)
    clock.advance(5)
    assert (await resolver.resolve(plaintext, policy(team))).team == team


async def test_concurrent_misses_share_one_query(db: Db) -> None:
    team = team_name()
    plaintext, _ = await db.store.create(team)
    resolver = KeyResolver(db.store, ttl_s=5)
    current = policy(team)

    found = await asyncio.gather(*(resolver.resolve(plaintext, current) for _ in range(20)))
    assert len(set(found)) == 1
    bad = await asyncio.gather(
        *(resolver.resolve("tg-bad-concurrent-key", current) for _ in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, AuthenticationFailed) for outcome in bad)
    assert db.key_lookups() == 2


async def test_a_cancelled_caller_does_not_fail_the_others(db: Db) -> None:
    team = team_name()
    plaintext, _ = await db.store.create(team)
    resolver = KeyResolver(db.store, ttl_s=5)
    current = policy(team)

    first = asyncio.create_task(resolver.resolve(plaintext, current))
    second = asyncio.create_task(resolver.resolve(plaintext, current))
    await asyncio.sleep(0)  # both are now waiting on the one query
    first.cancel()

    assert (await second).team == team
    with pytest.raises(asyncio.CancelledError):
        await first
    assert db.key_lookups() == 1


async def test_a_flood_of_bad_keys_cannot_evict_good_ones(db: Db) -> None:
    team = team_name()
    plaintext, _ = await db.store.create(team)
    resolver = KeyResolver(db.store, ttl_s=60, max_entries=3)
    current = policy(team)
    await resolver.resolve(plaintext, current)

    for i in range(10):
        with pytest.raises(AuthenticationFailed):
            await resolver.resolve(f"tg-bad-key-number-{i}", current)
    assert resolver.cached_entries == 4  # the good key and the 3 newest bad ones
    lookups = db.key_lookups()
    await resolver.resolve(plaintext, current)
    assert db.key_lookups() == lookups


async def test_database_outage_serves_known_keys_and_fails_unknown_ones_with_503() -> None:
    with ThrowawayPostgres() as server:
        await upgrade(server.url)
        engine = create_engine(server.url)
        try:
            store = KeyStore(session_factory(engine))
            plaintext, _ = await store.create("ops")
            clock = FakeClock(0.0)
            resolver = KeyResolver(store, ttl_s=5, clock=clock)
            current = policy("ops")
            await resolver.resolve(plaintext, current)

            server.stop()
            clock.advance(10)
            assert (await resolver.resolve(plaintext, current)).team == "ops"
            with pytest.raises(ServiceUnavailable) as raised:
                await resolver.resolve("tg-never-seen-before-key", current)
            assert raised.value.status == 503

            server.start()
            await store.revoke(plaintext[:11])
            clock.advance(5)
            with pytest.raises(AuthenticationFailed, match="revoked"):
                await resolver.resolve(plaintext, current)
        finally:
            await engine.dispose()


# --- the demo key -----------------------------------------------------------------------------


async def test_demo_key_is_kept_in_a_private_file_and_survives_a_new_database(
    db: Db, tmp_path: Path
) -> None:
    team = team_name()
    data_dir = tmp_path / "data"
    plaintext = await ensure_demo_key(db.store, data_dir, team)

    key_file = data_dir / "demo_key"
    assert key_file.read_text().strip() == plaintext
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert await ensure_demo_key(db.store, data_dir, team) == plaintext
    assert [r.name for r in await db.store.list(team)] == ["demo"]

    # A database recreated from scratch gets the same key back.
    other_url = f"sqlite+aiosqlite:///{tmp_path / 'recreated.db'}"
    await upgrade(other_url)
    engine = create_engine(other_url)
    try:
        other = KeyStore(session_factory(engine))
        assert await ensure_demo_key(other, data_dir, team) == plaintext
        found = await KeyResolver(other, ttl_s=5).resolve(plaintext, policy(team))
        assert found.key_name == "demo"
    finally:
        await engine.dispose()
