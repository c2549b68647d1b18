"""Policy files -> one validated :class:`Policy`, or every problem as ``file:line path: message``.

The steps: read each top-level ``*.yaml``/``*.yml`` file with line numbers (``yaml_nodes``), merge
the sections by name, validate the result with the pydantic schema, then check the names that
point elsewhere (a route's candidates, a model's provider, a team's routes). Problems are
collected rather than raised one at a time, so one run of ``tollgate check-policy`` shows them all.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

from pydantic import ValidationError

from gateway.errors import PolicyError
from gateway.policy.explain import did_you_mean, explain
from gateway.policy.schema import Policy, PolicyDocument
from gateway.policy.yaml_nodes import YamlFile, YamlPath, read_yaml, render_path
from gateway.pricing import format_problems, policy_problems

SUFFIXES = (".yaml", ".yml")

# Where each value came from: path -> (file as displayed, 1-based line).
Lines = dict[YamlPath, tuple[str, int]]


def load_policy(directory: Path, env: Mapping[str, str] | None = None) -> Policy:
    """Load every policy file in ``directory`` (or the single file it names).

    ``${VAR}`` and ``${VAR:-default}`` in strings are read from ``env`` (default: the process
    environment). Raises :class:`PolicyError` listing every problem found.
    """
    files = policy_files(directory)
    parsed = [read_yaml(file, str(file), os.environ if env is None else env) for file in files]
    problems = [problem for file in parsed for problem in file.problems]
    merged, lines, merge_problems = _merge(parsed)
    problems += merge_problems
    where = _Where(lines, str(files[0]))
    document: PolicyDocument | None = None
    try:
        document = PolicyDocument.model_validate(merged)
    except ValidationError as exc:
        reported = set().union(*(file.problem_paths for file in parsed))
        problems += explain(exc, PolicyDocument, merged, where, reported)
    # A file that could not be read leaves its names undefined: cross-checks would only add noise.
    if document is not None and not any(file.broken for file in parsed):
        problems += _cross_check(document, where)
        if not problems:
            # Every deployment must have a price (or say `pricing: free`) so budgets are exact.
            problems += format_problems(policy_problems(document), where)
    if problems or document is None:
        raise PolicyError(problems)
    return Policy(document, sources=tuple(str(file) for file in files))


def policy_files(directory: Path) -> list[Path]:
    """The files a policy is read from: ``directory`` itself if it is a file, else its YAML files.

    Subdirectories (``policies/examples/``) are documentation and hidden files are editor litter;
    neither is read.
    """
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise PolicyError([f"{directory}: no such file or directory"])
    files = sorted(
        (
            path
            for path in directory.iterdir()
            if path.suffix in SUFFIXES and not path.name.startswith(".") and path.is_file()
        ),
        key=lambda path: path.name,
    )
    if not files:
        raise PolicyError([f"{directory}: no policy files (*.yaml, *.yml)"])
    return files


# --- merging files ----------------------------------------------------------------------------


def _merge(parsed: list[YamlFile]) -> tuple[dict[str, object], Lines, list[str]]:
    sections = PolicyDocument.model_fields
    merged: dict[str, object] = {}
    lines: Lines = {}
    problems: list[str] = []
    for file in parsed:
        taken: set[YamlPath] = set()  # the paths this file contributes, to copy their lines
        for section, value in file.data.items():
            line = file.lines[(section,)]
            if section not in sections:
                hint = did_you_mean(section, sections)
                problems.append(
                    f'{file.display}:{line} {section}: unknown section "{section}"{hint}'
                )
                continue
            lines.setdefault((section,), (file.display, line))
            current = merged.get(section)
            if value is None:  # ``teams:`` with nothing under it yet
                continue
            if isinstance(value, dict) and isinstance(current, dict | None):
                target = merged.setdefault(section, {})
                assert isinstance(target, dict)
                for name, body in value.items():
                    path = (section, name)
                    if name in target:
                        first = "{}:{}".format(*lines[path])
                        here = f"{file.display}:{file.lines[path]} {render_path(path)}"
                        problems.append(f'{here}: "{name}" is already defined at {first}')
                        continue
                    target[name] = body
                    taken.add(path)
                    lines[path] = (file.display, file.lines[path])
            elif current is None:
                merged[section] = value
                taken.add((section,))
            else:
                first = "{}:{}".format(*lines[(section,)])
                here = f"{file.display}:{line} {section}"
                problems.append(f'{here}: section "{section}" is already defined at {first}')
        for value_path, value_line in file.lines.items():
            if value_path[:2] in taken or value_path[:1] in taken:
                lines.setdefault(value_path, (file.display, value_line))
    return merged, lines, problems


class _Where:
    """``where(path)`` -> ``file:line path``, with the line of the deepest part of ``path`` known.

    Errors about a missing field or an absent section have no line of their own; they get the
    line of the enclosing mapping, or the first file's first line.
    """

    def __init__(self, lines: Lines, fallback_file: str) -> None:
        self._lines = lines
        self._fallback = fallback_file

    def place(self, path: YamlPath) -> str:
        for end in range(len(path), 0, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return f"{found[0]}:{found[1]}"
        return f"{self._fallback}:1"

    def __call__(self, path: YamlPath) -> str:
        return f"{self.place(path)} {render_path(path)}"


# --- cross-references -------------------------------------------------------------------------


def _cross_check(document: PolicyDocument, where: _Where) -> list[str]:
    problems: list[str] = []
    if not document.routes:
        problems.append(f"{where(('routes',))}: at least one route is required")
    for name, model in document.models.items():
        if model.provider not in document.providers:
            unknown = _unknown("provider", model.provider, document.providers)
            problems.append(f"{where(('models', name, 'provider'))}: {unknown}")
    for name, route in document.routes.items():
        first_index: dict[str, int] = {}
        for index, candidate in enumerate(route.candidates):
            path = ("routes", name, "candidates", index)
            if candidate not in document.models:
                unknown = _unknown("model", candidate, document.models)
                problems.append(f"{where(path)}: {unknown}")
            elif candidate in first_index:
                first = f"candidates[{first_index[candidate]}]"
                problems.append(f'{where(path)}: duplicate candidate "{candidate}" (also {first})')
            first_index.setdefault(candidate, index)
        for weighted in route.weights:
            if weighted not in first_index:
                unknown = _unknown("candidate", weighted, route.candidates)
                problems.append(f"{where(('routes', name, 'weights', weighted))}: {unknown}")
    owners: dict[str, YamlPath] = {}
    for name, team in document.teams.items():
        for index, route_name in enumerate(team.routes):
            if route_name != "*" and route_name not in document.routes:
                unknown = _unknown("route", route_name, document.routes)
                problems.append(f"{where(('teams', name, 'routes', index))}: {unknown}")
        for index, key in enumerate(team.keys):
            path = ("teams", name, "keys", index)
            owner = owners.setdefault(key, path)
            if owner != path:
                # The hash is not a secret, but 64 hex digits drown the message.
                short = key[:19] + "..."
                first = where.place(owner)
                text = f'key {short} is already used by team "{owner[1]}" ({first})'
                problems.append(f"{where(path)}: {text}")
    return problems


def _unknown(kind: str, name: str, known: Collection[str]) -> str:
    return f'unknown {kind} "{name}"{did_you_mean(name, known)}'
