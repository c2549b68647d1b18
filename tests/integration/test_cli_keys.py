"""``tollgate keys`` and ``tollgate migrate`` end to end, on SQLite and Postgres.

stdout must carry data only (it is piped into jq and scripts); everything else goes to stderr.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.keys import hash_key
from gateway.cli import main
from gateway.db.migrate import current_revision, head_revision

Capture = pytest.CaptureFixture[str]

MINIMAL_POLICY = """
providers:
  sim:
    type: sim
models:
  sim-chat:
    provider: sim
    model: sim-chat
routes:
  chat:
    candidates: [sim-chat]
teams:
  search: {}
"""


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(
        "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    )
    return url


@pytest.fixture
def no_policy(tmp_path: Path) -> str:
    return str(tmp_path / "no-policy-here")


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create(capsys: Capture, db_url: str, policy: str, *extra: str) -> dict[str, Any]:
    code, out, _ = run(
        capsys, "keys", "create", "--database-url", db_url, "--policy", policy,
        "--format", "json", *extra,
    )  # fmt: skip
    assert code == 0
    created: dict[str, Any] = json.loads(out)
    return created


def test_create_list_revoke(capsys: Capture, db_url: str, no_policy: str) -> None:
    created = create(capsys, db_url, no_policy, "--team", "search", "--name", "search-app")
    assert created["key"].startswith("tg-") and created["id"].startswith("key_")
    assert created["prefix"] == created["key"][:11]
    assert (created["team"], created["name"], created["expires_at"]) == (
        "search",
        "search-app",
        None,
    )

    code, out, _ = run(capsys, "keys", "list", "--database-url", db_url, "--format", "json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["id"] == created["id"] and listed["status"] == "active"
    assert created["key"] not in out and hash_key(created["key"]) not in out

    code, out, _ = run(capsys, "keys", "revoke", created["prefix"], "--database-url", db_url)
    assert code == 0 and created["id"] in out and "revoked" in out

    code, out, _ = run(capsys, "keys", "list", "--database-url", db_url, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["id"], r["status"]) for r in rows] == [(created["id"], "revoked")]


def test_table_output_is_data_only(capsys: Capture, sqlite_url: str, no_policy: str) -> None:
    code, out, err = run(
        capsys, "keys", "create", "--team", "ads", "--database-url", sqlite_url,
        "--policy", no_policy,
    )  # fmt: skip
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:2] == ["id", "key"]
    assert row.split()[1].startswith("tg-")
    assert "shown again" in err and "shown again" not in out

    code, out, err = run(capsys, "keys", "list", "--team", "ads", "--database-url", sqlite_url)
    assert code == 0 and len(out.splitlines()) == 2 and err == ""
    assert "tg-" in out  # the prefix, for telling keys apart

    code, out, _ = run(capsys, "keys", "list", "--team", "nobody", "--database-url", sqlite_url)
    assert out == "(none)\n"


def test_expiring_key(capsys: Capture, db_url: str, no_policy: str) -> None:
    created = create(capsys, db_url, no_policy, "--team", "t", "--expires", "30d")
    assert created["expires_at"] is not None

    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--team", "t", "--expires", "soon", "--database-url", db_url])
    assert exited.value.code == 2
    assert "invalid duration" in capsys.readouterr().err


def test_revoking_an_unknown_key_fails(capsys: Capture, db_url: str) -> None:
    code, out, err = run(capsys, "keys", "revoke", "tg-nonexist", "--database-url", db_url)
    assert code == 1 and out == ""
    assert "no API key" in err


def test_warns_about_a_team_missing_from_the_policy(
    capsys: Capture, sqlite_url: str, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(MINIMAL_POLICY)

    _, out, err = run(
        capsys, "keys", "create", "--team", "serch", "--database-url", sqlite_url,
        "--policy", str(policies), "--format", "json",
    )  # fmt: skip
    assert "'serch' is not defined" in err
    assert json.loads(out)["team"] == "serch"  # created all the same: the policy may come later

    _, _, err = run(
        capsys, "keys", "create", "--team", "search", "--database-url", sqlite_url,
        "--policy", str(policies),
    )  # fmt: skip
    assert "warning" not in err


def test_database_from_the_environment(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_policy: str
) -> None:
    monkeypatch.delenv("TOLLGATE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TOLLGATE_DATA_DIR", str(tmp_path / "data"))
    code, out, _ = run(
        capsys, "keys", "create", "--team", "t", "--policy", no_policy, "--format", "json"
    )
    assert code == 0
    assert (tmp_path / "data" / "tollgate.db").exists()
    code, out, _ = run(capsys, "keys", "list", "--format", "json")
    assert len(json.loads(out)) == 1


def test_migrate_up_and_down(capsys: Capture, db_url: str) -> None:
    code, out, err = run(capsys, "migrate", "--database-url", db_url)
    assert code == 0 and out == ""
    head = head_revision()
    assert f"revision {head}" in err
    assert asyncio.run(current_revision(db_url)) == head

    code, _, err = run(capsys, "migrate", "--database-url", db_url, "--downgrade", "base")
    assert code == 0 and "revision base" in err
    assert asyncio.run(current_revision(db_url)) is None

    code, _, _ = run(capsys, "migrate", "--database-url", db_url, "--revision", "0001")
    assert code == 0
    assert asyncio.run(current_revision(db_url)) == "0001"
