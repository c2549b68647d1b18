"""Keeping label values bounded: every label maps its raw values onto a small, known set.

Prometheus keeps one time series per distinct label combination, so a label that takes
user-controlled values (a request id, a model name a client made up) grows without bound and
takes the monitoring down with it. Each label here goes through a :class:`LabelValues`:

* names the policy defines (teams, routes, deployments) are bound with :meth:`LabelValues.bind`;
  anything else becomes ``other``;
* values the code produces (statuses, error kinds, replicas) are admitted first come, up to a cap,
  if they look like identifiers; past the cap, ``other``;
* a missing value (``None``) is ``none``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

OTHER = "other"
NONE = "none"

# The policy's own name pattern (gateway.policy.schema.NAME_PATTERN), so every name the policy
# can define passes; user strings with spaces, quotes or newlines never do.
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")


class LabelValues:
    """The bounded set of values one label may take, and the mapping of raw values onto it."""

    __slots__ = ("_cap", "_fixed", "_map")

    def __init__(self, known: Iterable[str] = (), *, cap: int = 0) -> None:
        """``known`` values always pass; up to ``cap`` further well-formed ones pass first come."""
        self._fixed = frozenset(known)
        self._cap = len(self._fixed) + cap
        self._map: dict[str, str] = {value: value for value in self._fixed}

    def __call__(self, value: str | None) -> str:
        """The label value to export for ``value``."""
        if value is None:
            return NONE
        found = self._map.get(value)
        if found is not None:
            return found
        if len(self._map) < self._cap and _WELL_FORMED.fullmatch(value):
            self._map[value] = value
            return value
        return OTHER

    def bind(self, known: Iterable[str]) -> None:
        """Allow exactly ``known`` (plus the fixed values) from now on, e.g. after a policy reload.

        Series already exported for names that disappeared stay (counters never go back), which
        keeps the total bounded by the names the policies ever defined.
        """
        allowed = self._fixed | frozenset(known)
        self._map = {value: value for value in allowed}
        self._cap = len(allowed)

    @property
    def values(self) -> frozenset[str]:
        """The values that currently pass as themselves."""
        return frozenset(self._map)
