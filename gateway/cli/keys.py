"""``tollgate keys create|list|revoke``: manage the API keys stored in the database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.auth.keys import KeyRecord, parse_duration
from gateway.auth.store import KeyStore
from gateway.cli.output import FORMATS, emit
from gateway.db.engine import create_engine, redact_url, session_factory
from gateway.db.migrate import upgrade_if_new
from gateway.errors import PolicyError
from gateway.settings import Settings

T = TypeVar("T")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and its actions to the ``tollgate`` parser."""
    parser = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = parser.add_subparsers(dest="keys_action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="issue a key for a team (shown once)")
    create.add_argument("--team", required=True, help="the team the key belongs to")
    create.add_argument("--name", help="a label, e.g. the application using the key")
    create.add_argument("--expires", type=_duration, help="lifetime: 30d, 12h, 90m or 3600s")
    create.add_argument("--format", choices=("table", "json"), default="table")
    create.add_argument(
        "--policy", type=Path, help="policy directory to check the team against (TOLLGATE_POLICY)"
    )
    _database_option(create)
    create.set_defaults(run=run_create)

    listing = actions.add_parser("list", help="list keys (prefixes only, never the keys)")
    listing.add_argument("--team", help="only this team's keys")
    listing.add_argument("--format", choices=FORMATS, default="table")
    _database_option(listing)
    listing.set_defaults(run=run_list)

    revoke = actions.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key", metavar="ID_OR_PREFIX", help="key_... id or tg-... prefix")
    revoke.add_argument("--format", choices=("table", "json"), default="table")
    _database_option(revoke)
    revoke.set_defaults(run=run_revoke)


def run_create(args: argparse.Namespace) -> int:
    """``keys create``: print the new key and its id (stdout), a reminder (stderr)."""
    settings = Settings()
    _warn_if_unknown_team(args.team, args.policy or settings.policy)
    try:
        plaintext, record = _run_with_store(
            _database_url(args, settings),
            lambda store: store.create(args.team, name=args.name, expires_in=args.expires),
        )
    except DatabaseUnreachable as exc:
        return _fail(exc)
    row = {"id": record.id, "key": plaintext, **_public(record)}
    del row["status"], row["revoked_at"]
    if args.format == "json":
        sys.stdout.write(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        emit([row], "table")
    print("Store this key now: it cannot be shown again.", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """``keys list``: one row per key, with its display prefix and status."""
    try:
        records = _run_with_store(
            _database_url(args, Settings()), lambda store: store.list(team=args.team)
        )
    except DatabaseUnreachable as exc:
        return _fail(exc)
    emit([_public(record) for record in records], args.format)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """``keys revoke``: revoke one key; gateways stop accepting it within their cache TTL."""
    try:
        record = _run_with_store(
            _database_url(args, Settings()), lambda store: store.revoke(args.key)
        )
    except (LookupError, DatabaseUnreachable) as exc:
        return _fail(exc)
    row = _public(record)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        emit([row], "table")
    return 0


def _fail(exc: Exception) -> int:
    print(f"error: {exc.args[0]}", file=sys.stderr)
    return 1


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="database URL (TOLLGATE_DATABASE_URL; default: SQLite under TOLLGATE_DATA_DIR)",
    )


def _database_url(args: argparse.Namespace, settings: Settings) -> str:
    url: str = args.database_url or settings.resolved_database_url()
    return url


def _run_with_store(url: str, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run ``action`` on a store over ``url``, migrating a new database first.

    Raises :class:`DatabaseUnreachable` if the database cannot be connected to.
    """

    async def main() -> T:
        await upgrade_if_new(url)
        engine = create_engine(url)
        try:
            return await action(KeyStore(session_factory(engine)))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except OSError as exc:  # refused, unresolvable host, timeout: no traceback for these
        raise DatabaseUnreachable(f"cannot reach the database at {redact_url(url)}: {exc}") from exc


class DatabaseUnreachable(Exception):
    """The database named by the URL could not be connected to."""


def _warn_if_unknown_team(team: str, policy_dir: Path) -> None:
    # Only a hint: the policy may live elsewhere, or the team be added to it later.
    try:
        from gateway.policy.loader import load_policy
    except ImportError:
        return
    try:
        policy = load_policy(policy_dir)
    except (PolicyError, OSError):
        return
    if policy.team(team) is None:
        print(
            f"warning: team {team!r} is not defined in the policy at {policy_dir}; "
            "the gateway will refuse this key until it is",
            file=sys.stderr,
        )


def _public(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "team": record.team,
        "name": record.name,
        "prefix": record.prefix,
        "status": record.status,
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "revoked_at": _iso(record.revoked_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
