"""The child process of :func:`gateway.db.migrate.upgrade_in_subprocess`.

It upgrades the database named by ``$TOLLGATE_MIGRATE_DATABASE_URL`` and exits: Alembic is
imported here and dies with this process instead of staying in the server that started it.
Errors are logged (type and message, as every log line of the gateway) and exit with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from gateway import logs
from gateway.db.migrate import URL_VARIABLE, upgrade

log = logging.getLogger("gateway.db.migrate")


def main(argv: Sequence[str] | None = None) -> int:
    """Upgrade to the revision in ``argv``; 0 on success, 1 if the upgrade raised."""
    parser = argparse.ArgumentParser(prog="gateway.db.upgrade_child")
    parser.add_argument("revision")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--script-location", type=Path)
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    # Alembic announces each plugin it registers on import, at info; a server that migrated
    # in-process imported it before logging was set up and never showed these lines.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    url = os.environ.get(URL_VARIABLE)
    if not url:
        log.error("no database to migrate", extra={"fields": {"unset": URL_VARIABLE}})
        return 1
    try:
        asyncio.run(upgrade(url, args.revision, script_location=args.script_location))
    except Exception as exc:  # every failure is the same to the parent: logged, exit code 1
        log.error("migration failed", exc_info=exc)
        return 1
    return 0
