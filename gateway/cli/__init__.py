"""The ``tollgate`` command line. Each subcommand lives in its own module with a ``register``.

Commands that print data write only that data to stdout; logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
