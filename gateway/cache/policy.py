"""Whether and how one request uses the cache: the policy's ``cache:`` sections + request controls.

Everything here is pure. :func:`resolve` merges a route's ``cache:`` section over the top-level one
(field by field: a route that only says ``ttl_s: 60`` keeps the top-level scope and mode) into a
plain :class:`CacheSettings`, once per policy (see :class:`RouteCacheTable`), so no pydantic object
is touched per request. :func:`decide` then reads the request's headers and body.

Request controls:

* ``Cache-Control: no-cache`` — do not read the cache (the answer is still stored);
* ``Cache-Control: no-store`` — do not store the answer (a hit is still served);
* ``x-tollgate-cache-ttl: <seconds>`` — the stored entry's lifetime, at most the route's ``ttl_s``
  (a client may shorten what the operator allowed, never lengthen it); ``0`` means no-store.

The response header ``x-tollgate-cache`` says ``hit`` or ``miss`` when the cache was read, and
``bypass`` when it was not (a request control, or an uncacheable request: in
``mode: deterministic`` only temperature 0 or seeded requests are cached).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.cache.keys import Scope
from gateway.errors import InvalidRequest

TTL_HEADER = "x-tollgate-cache-ttl"
STATUS_HEADER = "x-tollgate-cache"
HIT, MISS, BYPASS = "hit", "miss", "bypass"


class SpecLike(Protocol):
    """A policy ``cache:`` section (``gateway.policy.schema.CacheSpec``; domain packages do not
    import each other, so the shape is stated here)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def ttl_s(self) -> float: ...
    @property
    def scope(self) -> Scope: ...
    @property
    def mode(self) -> str: ...
    @property
    def count_hits(self) -> bool: ...
    @property
    def max_entry_bytes(self) -> int: ...
    @property
    def model_fields_set(self) -> set[str]: ...


class RouteLike(Protocol):
    """The part of a policy route the cache reads (``gateway.policy.schema.Route``)."""

    @property
    def cache(self) -> SpecLike | None: ...
    @property
    def timeout_s(self) -> float: ...


class DocumentLike(Protocol):
    """The part of a policy document the cache reads (``PolicyDocument``)."""

    @property
    def routes(self) -> Mapping[str, RouteLike]: ...
    @property
    def cache(self) -> SpecLike | None: ...


_SPEC_FIELDS = ("enabled", "ttl_s", "scope", "mode", "count_hits", "max_entry_bytes")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """A route's effective cache section, as plain values."""

    ttl_s: float
    scope: Scope
    deterministic_only: bool
    count_hits: bool
    max_entry_bytes: int
    # How long a request waits for an identical one in flight before calling upstream itself.
    wait_s: float


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """What one request does with the cache."""

    read: bool
    write: bool
    ttl_s: float

    @property
    def used(self) -> bool:
        return self.read or self.write


def resolve(route: RouteLike, top: SpecLike | None) -> CacheSettings | None:
    """The route's effective settings; None when the route does not cache."""
    own = route.cache
    if own is None and top is None:
        return None
    # Field by field: what the route's section wrote wins, the rest comes from the top level
    # (or the schema's defaults when there is no top-level section).
    merged: dict[str, Any] = {}
    for name in _SPEC_FIELDS:
        if own is not None and (top is None or name in own.model_fields_set):
            merged[name] = getattr(own, name)
        else:
            merged[name] = getattr(top, name)
    if not merged["enabled"]:
        return None
    return CacheSettings(
        ttl_s=float(merged["ttl_s"]),
        scope=merged["scope"],
        deterministic_only=merged["mode"] == "deterministic",
        count_hits=bool(merged["count_hits"]),
        max_entry_bytes=int(merged["max_entry_bytes"]),
        wait_s=route.timeout_s,
    )


class RouteCacheTable:
    """Every route's :class:`CacheSettings` for one policy, resolved once when it is built."""

    __slots__ = ("_settings", "document")

    def __init__(self, document: DocumentLike) -> None:
        self.document = document
        self._settings = {
            name: resolve(route, document.cache) for name, route in document.routes.items()
        }

    def get(self, route: str) -> CacheSettings | None:
        return self._settings.get(route)


def cacheable(settings: CacheSettings, endpoint: str, body: Mapping[str, Any]) -> bool:
    """Whether the answer may be reused: always in ``mode: all``, else only a reproducible one."""
    if not settings.deterministic_only or endpoint == "embeddings":
        return True  # embeddings have no sampling
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    return temperature is not None and temperature == 0 and not isinstance(temperature, bool)


def decide(
    settings: CacheSettings, endpoint: str, headers: Mapping[str, str], body: Mapping[str, Any]
) -> CacheDecision:
    """Read/write/TTL for this request, from the route's settings, its headers and its body.

    ``headers`` is looked up by lower-case name (Starlette's ``request.headers`` works as is).
    Raises :class:`InvalidRequest` for an ``x-tollgate-cache-ttl`` that is not a number >= 0.
    """
    ttl_s = settings.ttl_s
    if not cacheable(settings, endpoint, body):
        return CacheDecision(read=False, write=False, ttl_s=ttl_s)
    read = write = True
    control = headers.get("cache-control")
    if control:
        for directive in control.lower().split(","):
            directive = directive.strip()
            if directive == "no-cache":
                read = False
            elif directive == "no-store":
                write = False
    asked = headers.get(TTL_HEADER)
    if asked is not None:
        wanted = _ttl(asked)
        if wanted == 0:
            write = False
        else:
            ttl_s = min(ttl_s, wanted)
    return CacheDecision(read=read, write=write, ttl_s=ttl_s)


def _ttl(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also refuses NaN
        raise InvalidRequest(
            f"Invalid '{TTL_HEADER}' header: expected a number of seconds >= 0.",
            param=TTL_HEADER,
        )
    return value


def status(decision: CacheDecision, hit: bool) -> str:
    """The ``x-tollgate-cache`` value: hit | miss when the cache was read, else bypass."""
    if not decision.read:
        return BYPASS
    return HIT if hit else MISS
