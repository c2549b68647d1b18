"""Fixtures for real services, shared by every suite (they cost nothing until a test asks).

Redis and Postgres are found or started once per session (see ``tests/support/services.py``);
each test gets its own Redis key prefix and, where it needs one, its own database.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import services


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL for this session; a throwaway server if none is configured or running."""
    with contextlib.ExitStack() as stack:
        try:
            url = services.find_redis(stack)
        except services.ServiceNotFound as exc:
            pytest.fail(f"No Redis for the integration tests: {exc}", pytrace=False)
        yield url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, e.g. ``tollgate-test:1a2b3c4d:``; its keys are deleted."""
    prefix = f"tollgate-test:{uuid.uuid4().hex[:8]}:"
    yield prefix
    services.delete_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[services.PostgresServer]:
    """The Postgres server for this session; a throwaway cluster if none is configured or up."""
    with contextlib.ExitStack() as stack:
        try:
            server = services.find_postgres(stack)
        except services.ServiceNotFound as exc:
            pytest.fail(f"No Postgres for the integration tests: {exc}", pytrace=False)
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: services.PostgresServer) -> Iterator[str]:
    """A database created for this test session (``tollgate_test_<uuid8>``), dropped at the end.

    Shared by the session's tests: use unique names (teams, keys) rather than expecting it empty.
    """
    with postgres_server.temporary_database() as url:
        yield url


@pytest.fixture
def fresh_postgres_url(postgres_server: services.PostgresServer) -> Iterator[str]:
    """An empty database of this test's own (for migrations), dropped after it."""
    with postgres_server.temporary_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file of this test's own (created on first connection)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'tollgate.db'}"
