"""Pydantic's validation errors, retold in terms of the YAML the author wrote.

Pydantic reports a ``loc`` that mixes YAML keys with schema internals (the tag of a tagged union,
the class name of each union member it tried) and messages written for programmers. This module
walks each ``loc`` through the schema to recover the YAML path, folds the per-member failures of a
union into one finding, and words each one for a person editing a policy file.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from gateway.policy.schema import NAME_PATTERN
from gateway.policy.yaml_nodes import YamlPath


@dataclass(frozen=True, slots=True)
class _Branch:
    """A place where pydantic tried one member of a (non-discriminated) union."""

    path: YamlPath
    label: str
    members: tuple[Any, ...]
    value: object


@dataclass(frozen=True, slots=True)
class _Issue:
    """One finding at a YAML path, before its file:line is known."""

    path: YamlPath
    text: str
    branches: tuple[_Branch, ...] = ()
    unknown_field: bool = False


def explain(
    exc: ValidationError,
    schema: type[BaseModel],
    data: object,
    where: Callable[[YamlPath], str],
    reported: Collection[YamlPath] = (),
) -> list[str]:
    """Translate pydantic's errors into ``file:line path: message`` lines.

    ``schema`` is the model that failed to validate ``data``; ``where(path)`` renders
    ``file:line path``.

    Union members are tried one by one and each fails in its own way; those failures are folded
    into the member the author evidently meant, or one "expected one of" line. Errors under a
    path already ``reported`` (e.g. an unset variable) are dropped as consequences.
    """
    issues = [_issue(error, schema, data) for error in exc.errors(include_url=False)]
    kept = [
        issue
        for issue in _fold_unions(issues, 0)
        if not any(issue.path[:end] in reported for end in range(len(issue.path) + 1))
    ]
    return [f"{where(issue.path)}: {issue.text}" for issue in kept]


def _issue(error: ErrorDetails, schema: type[BaseModel], data: object) -> _Issue:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    path, branches, parent, on_key = _walk(error["loc"], schema, data)
    got = f", got {_describe(error['input'])}"
    if kind == "missing":
        return _Issue(path[:-1], f'missing required field "{path[-1]}"', branches)
    if kind == "extra_forbidden":
        fields = parent.model_fields if parent is not None else {}
        text = f'unknown field "{path[-1]}"{did_you_mean(str(path[-1]), fields)}'
        return _Issue(path, text, branches, unknown_field=True)
    if kind == "union_tag_not_found":
        field = ctx["discriminator"].strip("'")
        return _Issue(path, f'missing required field "{field}"')
    if kind == "union_tag_invalid":
        field = ctx["discriminator"].strip("'")
        # ctx["tag"] is str() of the value (null becomes "None"): show what was written instead.
        value = error["input"].get(field) if isinstance(error["input"], dict) else ctx["tag"]
        tags = [tag.strip("'") for tag in ctx["expected_tags"].split(", ")]
        hint = did_you_mean(value, tags) if isinstance(value, str) else ""
        expected = ", ".join(f'"{tag}"' for tag in tags)
        text = f"unknown {field} {_describe(value)}{hint}; expected one of: {expected}"
        return _Issue((*path, field), text)
    if kind in _EXPECTED:
        return _Issue(path, f"expected {_EXPECTED[kind]}{got}", branches)
    if kind == "string_pattern_mismatch":
        rule = _PATTERN_RULES.get(ctx["pattern"], f"must match the pattern {ctx['pattern']}")
        if on_key:
            return _Issue(path, f"invalid name {_describe(path[-1])}: {rule}", branches)
        return _Issue(path, f"{rule}{got}", branches)
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return _Issue(path, "must not be empty", branches)
    if kind in _CONSTRAINTS:
        text = _CONSTRAINTS[kind].format(**{key: _plain(value) for key, value in ctx.items()})
        return _Issue(
            path, f"invalid name {_describe(path[-1])}: {text}" if on_key else text + got, branches
        )
    return _Issue(path, error["msg"].removeprefix("Value error, "), branches)


_EXPECTED = {
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_CONSTRAINTS = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "literal_error": "must be {expected}",
}
_PATTERN_RULES = {
    NAME_PATTERN: "names start with a letter or digit and contain only letters, digits and ._:/@-",
    r"^sha256:[0-9a-f]{64}$": 'expected "sha256:" followed by 64 lowercase hex digits',
}


def _walk(
    loc: tuple[int | str, ...], schema: type[BaseModel], data: object
) -> tuple[YamlPath, tuple[_Branch, ...], type[BaseModel] | None, bool]:
    """Follow pydantic's ``loc`` through the schema, keeping only the elements that are in YAML.

    Returns the YAML path, the union branches taken on the way, the model holding the last
    element (for "did you mean") and whether the error is about a mapping key.
    """
    annotation: Any = schema
    discriminator: str | None = None
    path: list[str | int] = []
    branches: list[_Branch] = []
    parent: type[BaseModel] | None = None
    on_key = False
    for element in loc:
        annotation, discriminator = _unwrap(annotation, discriminator)
        if element == "[key]":
            on_key = True
            continue
        if _is_union(annotation):
            members = tuple(_unwrap(member, None)[0] for member in get_args(annotation))
            member = _member(members, discriminator, element)
            if member is not None:
                if discriminator is None:  # a tagged union has no alternatives to weigh
                    branches.append(_Branch(tuple(path), str(element), members, data))
                annotation, discriminator = member, None
                continue
        parent, discriminator = None, None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            parent = annotation
            field = annotation.model_fields.get(str(element))
            annotation = field.annotation if field is not None else None
            discriminator = _discriminator(field.discriminator) if field is not None else None
        elif get_origin(annotation) in (dict, list):
            annotation = get_args(annotation)[-1]
        else:
            annotation = None
        path.append(element)
        data = _child(data, element)
    return tuple(path), tuple(branches), parent, on_key


def _unwrap(annotation: Any, discriminator: str | None) -> tuple[Any, str | None]:
    """Strip ``Annotated`` (keeping a discriminator found there) and ``None`` from unions."""
    while True:
        if get_origin(annotation) is Annotated:
            for meta in get_args(annotation)[1:]:
                if isinstance(meta, FieldInfo) and meta.discriminator is not None:
                    discriminator = _discriminator(meta.discriminator)
            annotation = get_args(annotation)[0]
        elif _is_union(annotation) and type(None) in get_args(annotation):
            rest = tuple(arg for arg in get_args(annotation) if arg is not type(None))
            annotation = rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007
        else:
            return annotation, discriminator


def _discriminator(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _member(members: tuple[Any, ...], discriminator: str | None, element: str | int) -> Any:
    for member in members:
        if discriminator is not None:
            field = _model_field(member, discriminator)
            if field is not None and element in get_args(field.annotation):
                return member
        elif _label(member) == element:
            return member
    return None


def _model_field(annotation: Any, name: str) -> FieldInfo | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_fields.get(name)
    return None


def _label(member: Any) -> str:
    """The name pydantic gives a union member in ``loc``."""
    if get_origin(member) is Literal:
        return "literal[" + ",".join(repr(arg) for arg in get_args(member)) + "]"
    return str(getattr(member, "__name__", member))


def _child(data: object, element: str | int) -> object:
    if isinstance(data, dict):
        return data.get(element)
    if isinstance(data, list) and isinstance(element, int) and 0 <= element < len(data):
        return data[element]
    return None


def _fold_unions(issues: list[_Issue], depth: int) -> list[_Issue]:
    """Replace each union's per-member failures with the intended member's, or a summary.

    The intended member is the only model that knows every key the author wrote; if there is
    none or more than one, all that can be said is what shapes would have been accepted.
    """
    groups: dict[YamlPath, list[_Issue]] = {}
    order: list[_Issue | YamlPath] = []
    for issue in issues:
        if len(issue.branches) <= depth:
            order.append(issue)
            continue
        union_path = issue.branches[depth].path
        if union_path not in groups:
            groups[union_path] = []
            order.append(union_path)
        groups[union_path].append(issue)
    folded: list[_Issue] = []
    for item in order:
        if isinstance(item, _Issue):
            folded.append(item)
            continue
        group = groups[item]
        branch = group[0].branches[depth]
        by_label: dict[str, list[_Issue]] = {}
        for issue in group:
            by_label.setdefault(issue.branches[depth].label, []).append(issue)
        intended = [
            label
            for label, member_issues in by_label.items()
            if isinstance(branch.value, dict)
            and _is_model(_member(branch.members, None, label))
            and not any(i.unknown_field and len(i.path) == len(item) + 1 for i in member_issues)
        ]
        if len(intended) == 1:
            folded += _fold_unions(by_label[intended[0]], depth + 1)
        else:
            shapes = " | ".join(_shape(member) for member in branch.members)
            folded.append(_Issue(item, f"expected one of: {shapes}, got {_describe(branch.value)}"))
    return folded


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _shape(member: Any) -> str:
    """A one-line picture of what a union member accepts: ``{usd_per_hour, gpus, ...}``."""
    if get_origin(member) is Literal:
        return " | ".join(repr(arg) for arg in get_args(member))
    if not _is_model(member):
        return _label(member)
    parts = []
    for name, field in member.model_fields.items():
        if field.is_required():
            nested = _is_model(_unwrap(field.annotation, None)[0])
            parts.append(f"{name}: {{...}}" if nested else name)
    if len(parts) < len(member.model_fields):
        parts.append("...")
    return "{" + ", ".join(parts) + "}"


def _plain(value: object) -> object:
    """``0.0`` -> ``0``: a bound written as a whole number reads better without the decimals."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _describe(value: object) -> str:
    """A short rendering of a value from YAML, for "got ..." in messages."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ", ".join(map(str, value)) + "}"
    if isinstance(value, list):
        return "a list"
    return str(value)


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """`` (did you mean "x"?)`` for the closest of ``choices``, or nothing if none is close."""
    # 0.7 rather than difflib's 0.6: below it the guesses are more distracting than helpful.
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f' (did you mean "{matches[0]}"?)' if matches else ""
