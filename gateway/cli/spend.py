"""``tollgate spend``: what a team spent, per day, model, key, route, status or tag."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime

import orjson

from gateway.cli.output import FORMATS, emit
from gateway.db.engine import DatabaseError, create_engine, redact_url
from gateway.ledger.queries import GROUPINGS, SpendQueries, SpendReport
from gateway.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``spend`` to the ``tollgate`` parser."""
    parser = commands.add_parser(
        "spend",
        help="report spend from the usage ledger",
        description=(
            "Spend per UTC day range, grouped one way. Days, models (deployments), keys, routes "
            "and statuses come from the daily roll-up; tags from the ledger rows."
        ),
    )
    parser.add_argument("--team", help="only this team (default: every team)")
    parser.add_argument(
        "--since", required=True, type=_day, help="first UTC day, YYYY-MM-DD (included)"
    )
    parser.add_argument(
        "--until", type=_day, help="last UTC day, YYYY-MM-DD (included; default: today)"
    )
    parser.add_argument("--by", choices=GROUPINGS, default="day", help="grouping (default: day)")
    parser.add_argument(
        "--tag",
        metavar="KEY",
        help="with --by tag: group by this tag's value (default: by every key=value pair)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument(
        "--database-url",
        help="database URL (TOLLGATE_DATABASE_URL; default: SQLite under TOLLGATE_DATA_DIR)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the report: a table with a total line, CSV with a total row, or a JSON object."""
    if args.tag is not None and args.by != "tag":
        print("error: --tag only applies to --by tag", file=sys.stderr)
        return 2
    url: str = args.database_url or Settings().resolved_database_url()
    until: date = args.until or datetime.now(UTC).date()
    if until < args.since:
        print(f"error: --until {until} is before --since {args.since}", file=sys.stderr)
        return 2

    async def main() -> SpendReport:
        engine = create_engine(url)
        try:
            return await SpendQueries(engine).spend(
                team=args.team, since=args.since, until=until, by=args.by, tag_key=args.tag
            )
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(main())
    except OSError as exc:
        print(f"error: cannot reach the database at {redact_url(url)}: {exc}", file=sys.stderr)
        return 1
    except DatabaseError as exc:
        print(
            f"error: cannot read the usage ledger at {redact_url(url)} "
            f"({str(exc.orig).splitlines()[0]}); run `tollgate migrate` if it is new",
            file=sys.stderr,
        )
        return 1
    data = report.as_json()
    if args.format == "json":
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    total = dict(data["total"])
    label = next(iter(total))
    total[label] = "TOTAL"
    emit([*data["rows"], total], args.format)
    return 0


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None
