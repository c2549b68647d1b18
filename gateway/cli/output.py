"""Shared by the commands: data for humans (table) or machines (json, csv) on stdout, nothing
else; the policy loaded with its problems reported on stderr."""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from gateway.errors import PolicyError
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.policy.schema import Policy

FORMATS = ("table", "json", "csv")


def emit(rows: Sequence[Mapping[str, Any]], fmt: str, out: TextIO | None = None) -> None:
    """Write ``rows`` to stdout as an aligned table, a JSON array or CSV with a header."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(orjson.dumps(list(rows), default=str, option=orjson.OPT_INDENT_2).decode())
        out.write("\n")
        return
    columns = list(rows[0].keys()) if rows else []
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    if not rows:
        out.write("(none)\n")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def load_policy_or_report(directory: Path) -> Policy | None:
    """The policy at ``directory``, or None after printing each problem to stderr."""
    from gateway.policy.loader import load_policy

    try:
        return load_policy(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def policy_dir(given: Path | None, settings: Settings) -> Path:
    """``--policy``, else ``$TOLLGATE_POLICY``, else ``policies/``."""
    return given or settings.policy
