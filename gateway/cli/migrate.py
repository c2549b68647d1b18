"""``tollgate migrate``: bring the database schema up (or down) to a revision."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.db.engine import redact_url
from gateway.db.migrate import current_revision, downgrade, upgrade
from gateway.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` to the ``tollgate`` parser."""
    parser = commands.add_parser("migrate", help="apply database migrations")
    parser.add_argument(
        "--database-url",
        help="database URL (TOLLGATE_DATABASE_URL; default: SQLite under TOLLGATE_DATA_DIR)",
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument(
        "--revision", default="head", help="upgrade to this revision (default: head)"
    )
    direction.add_argument(
        "--downgrade", metavar="REV", help="downgrade to REV instead (-1, base, or an id)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Migrate, then report the revision the database is at (on stderr: it is a log line)."""
    url: str = args.database_url or Settings().resolved_database_url()

    async def main() -> str | None:
        if args.downgrade is not None:
            await downgrade(url, args.downgrade)
        else:
            await upgrade(url, args.revision)
        return await current_revision(url)

    revision = asyncio.run(main())
    print(f"{redact_url(url)} is at revision {revision or 'base'}", file=sys.stderr)
    return 0
