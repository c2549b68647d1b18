"""``tollgate check-policy [DIR]``: validate policy files without starting anything.

Exit status 0 when the policy is valid, 1 when it is not (every problem on stderr, one
``file:line path: message`` per line), so it can guard a deploy or a pre-commit hook.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from gateway.errors import PolicyError
from gateway.policy.loader import load_policy
from gateway.policy.schema import Policy


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``check-policy`` to the ``tollgate`` parser."""
    parser = commands.add_parser(
        "check-policy", help="validate the policy files and report every problem with file:line"
    )
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="policy directory or file (default: $TOLLGATE_POLICY, else policies/)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: a one-line summary; json: an object with the names defined",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the policy the way the gateway would and report the outcome."""
    # Resolved here rather than as the argparse default, so the environment is read when the
    # command runs, not when the parser is built.
    directory: Path = args.directory or Path(os.environ.get("TOLLGATE_POLICY") or "policies")
    try:
        policy = load_policy(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if args.format == "json":
            _write_json({"ok": False, "problems": exc.problems})
        return 1
    if args.format == "json":
        _write_json(_details(policy))
    else:
        print(summary(policy))
    return 0


def summary(policy: Policy) -> str:
    """``ok: 2 files, 3 providers, 4 models, 2 routes, 1 team``."""
    document = policy.document
    counts = [
        _count(len(policy.sources), "file"),
        _count(len(document.providers), "provider"),
        _count(len(document.models), "model"),
        _count(len(document.routes), "route"),
        _count(len(document.teams), "team"),
    ]
    return "ok: " + ", ".join(counts)


def _details(policy: Policy) -> dict[str, object]:
    document = policy.document
    return {
        "ok": True,
        "sources": list(policy.sources),
        "providers": {name: spec.type for name, spec in document.providers.items()},
        "models": {name: spec.provider for name, spec in document.models.items()},
        "routes": {name: spec.candidates for name, spec in document.routes.items()},
        "teams": {name: spec.routes for name, spec in document.teams.items()},
    }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _write_json(data: dict[str, object]) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
