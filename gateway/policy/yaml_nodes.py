"""Line-tracked YAML: plain Python data plus the line every value came from.

PyYAML's constructors throw positions away, so a policy file is *composed* into nodes (safe
loader, no construction) and converted here, recording ``path -> line`` as it goes. The same walk
rejects duplicate keys (PyYAML silently keeps the last one) and expands ``${VAR}`` references in
string scalars, so a problem in any of them can be reported as ``file:line path: message``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

YamlPath = tuple[str | int, ...]

_CORE = "tag:yaml.org,2002:"
_STR_TAG = _CORE + "str"
_MERGE_TAG = _CORE + "merge"
_TIMESTAMP_TAG = _CORE + "timestamp"
# Scalars a policy may hold; everything else (python/*, binary, custom tags) is refused.
_SCALAR_TAGS = frozenset(_CORE + name for name in ("int", "float", "bool", "null"))

# ``$${`` is a literal ``${``; ``${NAME}`` / ``${NAME:-default}`` a reference; a lone ``${`` with
# no closing brace is a mistake worth reporting rather than passing through.
_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def render_path(path: YamlPath) -> str:
    """``("routes", "chat", "candidates", 2)`` -> ``routes.chat.candidates[2]``."""
    text = ""
    for element in path:
        if isinstance(element, int):
            text += f"[{element}]"
        else:
            text += f".{element}" if text else element
    return text


@dataclass(slots=True)
class YamlFile:
    """One policy file converted to plain data.

    ``broken`` means the file could not be read at all (bad syntax, not a mapping): its
    definitions are missing, so checks that look across files would only report noise.
    ``problems`` may be non-empty without ``broken`` (a missing variable, a duplicate key): the
    rest of the file is still usable and still checked.
    """

    display: str
    data: dict[str, object] = field(default_factory=dict)
    lines: dict[YamlPath, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Values already reported (e.g. an unset variable): schema errors about them are noise.
    problem_paths: set[YamlPath] = field(default_factory=set)
    broken: bool = False


def read_yaml(path: Path, display: str, env: Mapping[str, str]) -> YamlFile:
    """Read one policy file; every problem is reported in ``problems``, never raised."""
    result = YamlFile(display)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _broken(result, f"{display}: cannot read: {exc}")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        return _broken(result, _syntax_problem(display, exc))
    except yaml.YAMLError as exc:
        return _broken(result, f"{display}: invalid YAML: {exc}")
    if root is None:  # empty, or only comments
        return result
    if not isinstance(root, MappingNode):
        line = root.start_mark.line + 1
        return _broken(result, f"{display}:{line}: expected a mapping of sections at the top level")
    converter = _Converter(display, env, result)
    data = converter.convert(root, ())
    assert isinstance(data, dict)
    result.data = data
    return result


def _broken(result: YamlFile, problem: str) -> YamlFile:
    result.problems.append(problem)
    result.broken = True
    return result


def _syntax_problem(display: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{display}:{mark.line + 1}" if mark is not None else display
    message = exc.problem or exc.context or "syntax error"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"{where}: invalid YAML: {message}"


class _Converter:
    """Turns composed nodes into dicts, lists and scalars, filling the line map."""

    def __init__(self, display: str, env: Mapping[str, str], result: YamlFile) -> None:
        self._display = display
        self._env = env
        self._lines = result.lines
        self._result = result
        self._scalars = SafeConstructor()
        # Nodes being converted on the current branch: an alias back to one of them would
        # recurse forever.
        self._active: set[int] = set()

    def convert(self, node: Node, path: YamlPath) -> object:
        if id(node) in self._active:
            self._problem(node, path, "an alias refers to a value that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            assert isinstance(node, ScalarNode)
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[str, object]:
        result: dict[str, object] = {}
        first_line: dict[str, int] = {}
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path))
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in first_line:
                self._problem(
                    key_node,
                    (*path, key),
                    f'duplicate key "{key}" (first defined at line {first_line[key]})',
                    replaced=False,
                )
                continue
            first_line[key] = line
            self._lines[(*path, key)] = line
            result[key] = self.convert(value_node, (*path, key))
        # ``<<: *base``: explicit keys win, then earlier merge sources win over later ones.
        for key_node, value_node in merged:
            key = self._key(key_node, path)
            if key is None or key in result:
                continue
            self._lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.convert(value_node, (*path, key))
        return result

    def _merge_sources(self, node: Node, path: YamlPath) -> list[tuple[Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self._problem(
                    source,
                    path,
                    "a merge key (<<) needs a mapping or a list of them",
                    replaced=False,
                )
                continue
            for key_node, value_node in source.value:
                if key_node.tag == _MERGE_TAG:
                    pairs.extend(self._merge_sources(value_node, path))
                else:
                    pairs.append((key_node, value_node))
        return pairs

    def _key(self, node: Node, path: YamlPath) -> str | None:
        # Keys are names (of sections, fields, routes...): take the text as written, so that
        # a route called ``1`` or ``yes`` stays the string the author typed.
        if isinstance(node, ScalarNode):
            return str(node.value)
        self._problem(node, path, "mapping keys must be plain names", replaced=False)
        return None

    def _sequence(self, node: SequenceNode, path: YamlPath) -> list[object]:
        items: list[object] = []
        for index, item in enumerate(node.value):
            self._lines[(*path, index)] = item.start_mark.line + 1
            items.append(self.convert(item, (*path, index)))
        return items

    def _scalar(self, node: ScalarNode, path: YamlPath) -> object:
        if node.tag == _STR_TAG:
            return self._interpolate(node, path)
        if node.tag in _SCALAR_TAGS:
            return self._scalars.construct_object(node)
        if node.tag == _TIMESTAMP_TAG:
            # No field holds a date; keep what was written rather than a datetime.
            return str(node.value)
        self._problem(node, path, f"unsupported YAML tag {node.tag}")
        return None

    def _interpolate(self, node: ScalarNode, path: YamlPath) -> str:
        text = str(node.value)
        if "${" not in text:
            return text
        pieces: list[str] = []
        end = 0
        for match in _REFERENCE.finditer(text):
            pieces.append(text[end : match.start()])
            end = match.end()
            body = match.group("body")
            if match.group() == "$${":
                pieces.append("${")
            elif body is None:
                self._problem(node, path, 'unterminated "${" (write "$${" for a literal "${")')
                pieces.append(match.group())
            else:
                pieces.append(self._lookup(node, path, body))
        pieces.append(text[end:])
        return "".join(pieces)

    def _lookup(self, node: ScalarNode, path: YamlPath, body: str) -> str:
        name, has_default, default = body.partition(":-")
        if not _VARIABLE.fullmatch(name):
            self._problem(node, path, f'invalid variable reference "${{{body}}}"')
            return ""
        value = self._env.get(name)
        # Shell semantics: ``:-`` also replaces a variable that is set but empty.
        if has_default and not value:
            return default
        if value is None:
            self._problem(node, path, f"environment variable {name} is not set")
            return ""
        return value

    def _problem(self, node: Node, path: YamlPath, message: str, *, replaced: bool = True) -> None:
        """Report a problem; ``replaced`` means the value at ``path`` is now a placeholder."""
        where = f"{self._display}:{node.start_mark.line + 1}"
        self._result.problems.append(
            f"{where} {render_path(path)}: {message}" if path else f"{where}: {message}"
        )
        if replaced:
            self._result.problem_paths.add(path)
