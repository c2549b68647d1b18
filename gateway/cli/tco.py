"""``tollgate tco [DIR]``: what each GPU pool in a policy costs, per year, per GPU-hour, per token.

One entry per provider priced as a pool (``pricing: {tco: ...}`` or ``pricing: {usd_per_hour:
...}``): the yearly cost breakdown per server, ``usd_per_gpu_hour``, ``usd_per_mtok_output``,
``usd_per_mtok_input`` and ``break_even_months`` against renting (see ``gateway.pricing.tco``
for the formulas). ``--instances N --gpus-per-instance M`` adds the brief's sizing rule;
``--what-if utilization=0.8,usd_per_kwh=0.2`` shows each figure before and after the change.

``--format json`` prints a list of flat objects with plain numbers (``null`` for "never"; with
``--what-if``, two objects per pool told apart by ``scenario``); the table puts the pools side
by side. Data only on stdout; problems on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.cli.output import emit
from gateway.errors import PolicyError
from gateway.policy.loader import load_policy
from gateway.pricing.tco import (
    PoolPricing,
    pool_cost,
    priced_pools,
    sizing,
    what_if_fields,
    with_changes,
)

# Table labels (the JSON keys are the field names themselves).
_LABELS = {
    "kind": "kind",
    "gpus_per_server": "GPUs per server/instance",
    "capex_usd": "server price $",
    "amortized_capex_usd_per_year": "amortized server $/year",
    "hosting_usd_per_year": "hosting $/year",
    "software_usd_per_year": "software $/year",
    "power_usd_per_year": "power $/year",
    "rent_usd_per_year": "rent $/year",
    "total_usd_per_year": "total $/year per server",
    "usd_per_gpu_year": "$ per GPU-year",
    "opex_usd_per_gpu_year": "opex $ per GPU-year",
    "usd_per_gpu_hour": "$ per GPU-hour",
    "usd_per_mtok_output": "$ per 1M output tokens",
    "usd_per_mtok_input": "$ per 1M input tokens",
    "cloud_usd_per_hour": "cloud comparator $/hour",
    "break_even_months": "break-even months",
    "instances": "instances",
    "gpus_per_instance": "GPUs per instance",
    "servers": "servers needed",
    "servers_capex_usd": "servers price $",
    "servers_usd_per_year": "servers $/year",
}

# Figures about paying a server back, which a rented pool has none of.
_OWNED_ONLY = frozenset({"cloud_usd_per_hour", "break_even_months"})


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tco`` to the ``tollgate`` parser."""
    parser = commands.add_parser(
        "tco",
        help="cost of each GPU pool: yearly breakdown, $/GPU-hour, $/1M tokens, break-even",
    )
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="policy directory or file (default: $TOLLGATE_POLICY, else policies/)",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument(
        "--what-if",
        action="append",
        default=[],
        metavar="NAME=VALUE,...",
        help="change pricing fields (e.g. utilization=0.8,usd_per_kwh=0.2) and show before/after",
    )
    parser.add_argument("--instances", type=_count, help="model instances to host (sizing)")
    parser.add_argument(
        "--gpus-per-instance", type=_count, help="GPUs each instance needs (sizing)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the policy, cost its pools and print them."""
    if (args.instances is None) != (args.gpus_per_instance is None):
        print("tollgate tco: --instances and --gpus-per-instance go together", file=sys.stderr)
        return 2
    try:
        changes = parse_what_if(args.what_if)
    except ValueError as exc:
        print(f"tollgate tco: --what-if: {exc}", file=sys.stderr)
        return 2
    directory: Path = args.directory or Path(os.environ.get("TOLLGATE_POLICY") or "policies")
    try:
        policy = load_policy(directory, env=_EnvWithoutSecrets(os.environ))
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    pools = priced_pools(policy.document)
    if not pools:
        print("tollgate tco: no provider is priced as a GPU pool (tco or hourly)", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for name, pricing in pools.items():
        if changes:
            try:
                changed = with_changes(pricing, changes)
            except ValueError as exc:
                print(f"tollgate tco: --what-if for {name}: {exc}", file=sys.stderr)
                return 2
            rows.append(pool_row(name, pricing, args, scenario="before"))
            rows.append(pool_row(name, changed, args, scenario="after"))
        else:
            rows.append(pool_row(name, pricing, args))
    if args.format == "json":
        emit(rows, "json")
    else:
        emit(side_by_side(rows), "table")
    return 0


class _EnvWithoutSecrets(Mapping[str, str]):
    """The environment, where an unset variable reads as empty instead of being an error.

    Costing a policy needs its prices, not the API keys it names (``${OPENAI_API_KEY}``), so
    ``tollgate tco`` runs on a laptop without production secrets. A price that is itself an
    unset variable still fails: an empty string is not a number.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        return self._environ.get(name, "")

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def parse_what_if(values: list[str]) -> dict[str, str]:
    """``["utilization=0.8,usd_per_kwh=0.2"]`` -> ``{"utilization": "0.8", ...}``.

    Values stay strings: the schema converts and range-checks them per pool.
    """
    known = what_if_fields()
    changes: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            name, equals, number = (part.strip() for part in item.partition("="))
            if not equals or not number:
                raise ValueError(f'"{item}" is not NAME=VALUE')
            if name not in known:
                raise ValueError(f'unknown field "{name}" (one of: {", ".join(sorted(known))})')
            changes[name] = number
    return changes


def pool_row(
    name: str, pricing: PoolPricing, args: argparse.Namespace, scenario: str | None = None
) -> dict[str, Any]:
    """One pool's figures as a flat row (plain numbers; ``None`` for "never")."""
    cost = pool_cost(pricing)
    row: dict[str, Any] = {"pool": name}
    if scenario is not None:
        row["scenario"] = scenario
    row.update(cost.as_dict())
    if args.instances is not None:
        row.update(sizing(cost, args.instances, args.gpus_per_instance).as_dict())
    return row


def side_by_side(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows per pool -> rows per figure, one column per pool (and scenario): easier to read."""
    columns = [
        f"{row['pool']} ({row['scenario']})" if "scenario" in row else str(row["pool"])
        for row in rows
    ]
    fields = [key for key in rows[0] if key not in ("pool", "scenario")] if rows else []
    table: list[dict[str, Any]] = []
    for field in fields:
        line: dict[str, Any] = {"": _LABELS.get(field, field)}
        for column, row in zip(columns, rows, strict=True):
            rented = row["kind"] == "hourly" and field in _OWNED_ONLY
            line[column] = "-" if rented else _cell(field, row[field])
        table.append(line)
    return table


def _cell(field: str, value: Any) -> str:
    if value is None:
        return "never" if field == "break_even_months" else "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    number = float(value)
    if field.startswith("usd_per_mtok") or field == "usd_per_gpu_hour":
        return f"{number:.4f}"
    if field == "break_even_months":
        return f"{number:.1f}"
    return f"{number:,.2f}"


def _count(text: str) -> int:
    number = int(text)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return number
