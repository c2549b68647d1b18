"""Effective cache settings per route, and the request controls (a pure decision)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cache.policy import (
    BYPASS,
    HIT,
    MISS,
    CacheSettings,
    RouteCacheTable,
    cacheable,
    decide,
    status,
)
from gateway.errors import InvalidRequest
from gateway.policy.schema import PolicyDocument

CHAT = "chat/completions"


def document(top: dict[str, Any] | None, **routes: dict[str, Any] | None) -> PolicyDocument:
    data: dict[str, Any] = {
        "providers": {"sim": {"type": "sim"}},
        "models": {"m": {"provider": "sim", "model": "m"}},
        "routes": {
            name: {"candidates": ["m"], "timeout_s": 7, **({"cache": c} if c is not None else {})}
            for name, c in routes.items()
        },
    }
    if top is not None:
        data["cache"] = top
    return PolicyDocument.model_validate(data)


def settings(**changes: Any) -> CacheSettings:
    base: dict[str, Any] = {
        "ttl_s": 600.0,
        "scope": "team",
        "deterministic_only": True,
        "count_hits": False,
        "max_entry_bytes": 262_144,
        "wait_s": 60.0,
    }
    base.update(changes)
    return CacheSettings(**base)


def test_no_cache_section_anywhere_means_no_caching() -> None:
    table = RouteCacheTable(document(None, chat=None))
    assert table.get("chat") is None
    assert table.get("unknown") is None


def test_top_level_section_applies_to_every_route() -> None:
    table = RouteCacheTable(document({"ttl_s": 30, "scope": "shared"}, a=None, b=None))
    for route in ("a", "b"):
        found = table.get(route)
        assert found is not None
        assert (found.ttl_s, found.scope, found.deterministic_only) == (30, "shared", True)
        assert found.wait_s == 7  # the route's timeout bounds the single-flight wait


def test_route_section_overrides_field_by_field() -> None:
    doc = document(
        {"ttl_s": 30, "scope": "shared", "mode": "all", "count_hits": True},
        quick={"ttl_s": 5},
        off={"enabled": False},
        plain=None,
    )
    table = RouteCacheTable(doc)
    quick = table.get("quick")
    assert quick is not None
    assert (quick.ttl_s, quick.scope, quick.deterministic_only, quick.count_hits) == (
        5,
        "shared",
        False,
        True,
    )
    assert table.get("off") is None
    plain = table.get("plain")
    assert plain is not None and plain.ttl_s == 30


def test_route_section_alone_uses_the_schema_defaults() -> None:
    found = RouteCacheTable(document(None, chat={"max_entry_bytes": 1000}, other=None)).get("chat")
    assert found == settings(max_entry_bytes=1000, wait_s=7.0)
    assert RouteCacheTable(document(None, chat={}, other=None)).get("other") is None


def test_deterministic_mode_caches_only_temperature_zero_or_seeded() -> None:
    s = settings()
    assert cacheable(s, CHAT, {"temperature": 0})
    assert cacheable(s, CHAT, {"temperature": 0.0, "n": 3})
    assert cacheable(s, CHAT, {"temperature": 0.9, "seed": 7})
    assert not cacheable(s, CHAT, {})
    assert not cacheable(s, CHAT, {"temperature": 0.2})
    assert not cacheable(s, CHAT, {"temperature": False})
    assert not cacheable(s, CHAT, {"seed": None})
    assert cacheable(s, "embeddings", {})
    assert cacheable(settings(deterministic_only=False), CHAT, {"temperature": 1.3})


def test_uncacheable_request_bypasses() -> None:
    decision = decide(settings(), CHAT, {}, {"temperature": 1})
    assert not decision.read and not decision.write
    assert status(decision, hit=False) == BYPASS


def test_plain_request_reads_and_writes_with_the_route_ttl() -> None:
    decision = decide(settings(ttl_s=90), CHAT, {}, {"temperature": 0})
    assert (decision.read, decision.write, decision.ttl_s) == (True, True, 90)
    assert status(decision, hit=True) == HIT
    assert status(decision, hit=False) == MISS


@pytest.mark.parametrize(
    ("control", "read", "write"),
    [
        ("no-cache", False, True),
        ("no-store", True, False),
        ("no-cache, no-store", False, False),
        ("No-Cache,max-age=0", False, True),
        ("max-age=0", True, True),
    ],
)
def test_cache_control(control: str, read: bool, write: bool) -> None:
    decision = decide(settings(), CHAT, {"cache-control": control}, {"temperature": 0})
    assert (decision.read, decision.write) == (read, write)
    assert status(decision, hit=False) == (MISS if read else BYPASS)


def test_ttl_header_shortens_but_never_lengthens() -> None:
    shorter = decide(settings(ttl_s=600), CHAT, {"x-tollgate-cache-ttl": "60"}, {"seed": 1})
    assert shorter.ttl_s == 60 and shorter.write
    longer = decide(settings(ttl_s=600), CHAT, {"x-tollgate-cache-ttl": "86400"}, {"seed": 1})
    assert longer.ttl_s == 600
    zero = decide(settings(), CHAT, {"x-tollgate-cache-ttl": "0"}, {"seed": 1})
    assert zero.read and not zero.write


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", ""])
def test_bad_ttl_header_is_a_client_error(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decide(settings(), CHAT, {"x-tollgate-cache-ttl": value}, {"seed": 1})
    assert caught.value.status == 400
    assert caught.value.param == "x-tollgate-cache-ttl"
