"""The ``tollgate`` command line. Each subcommand lives in its own module with a ``register``.

Commands that print data write only that data to stdout; logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from gateway.cli import (
    bench,
    budget,
    keys,
    migrate,
    policy,
    reconcile,
    serve,
    sim,
    spend,
    tco,
)
from gateway.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollgate", description="Tollgate: a model-routing gateway for LLM inference."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, policy, keys, migrate, sim, tco, budget, spend, reconcile, bench):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        # A TOLLGATE_* variable the settings refuse: say which and why, not a traceback.
        for line in setting_errors(exc):
            print(f"tollgate: {line}", file=sys.stderr)
        return 2
    return code


def setting_errors(exc: ValidationError) -> list[str]:
    """One line per refused setting, named as the environment variable that carries it."""
    lines = []
    for error in exc.errors(include_url=False):
        name = "_".join(str(part) for part in error["loc"])
        lines.append(f"invalid setting TOLLGATE_{name.upper()}={error['input']!r}: {error['msg']}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
