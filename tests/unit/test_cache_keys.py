"""The canonical request hash: what splits the key, what does not, and what it costs."""

from __future__ import annotations

import time
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.keys import cache_key, canonical_body, lock_key, request_hash

CHAT = "chat/completions"


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three primes.", "name": "ann"},
        ],
        "temperature": 0,
        "max_tokens": 50,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def h(b: dict[str, Any], route: str = "chat", endpoint: str = CHAT) -> str:
    return request_hash(route, endpoint, b)


def test_key_order_does_not_matter_at_any_depth() -> None:
    reordered = {
        "max_tokens": 50,
        "temperature": 0,
        "messages": [
            {"content": "You are terse.", "role": "system"},
            {"name": "ann", "content": "Name three primes.", "role": "user"},
        ],
        "model": "chat",
    }
    assert h(body()) == h(reordered)


def test_json_whitespace_does_not_matter() -> None:
    compact = b'{"model":"chat","messages":[{"role":"user","content":"hi"}],"temperature":0}'
    spaced = (
        b'{ "model" : "chat",\n  "messages": [ {"role": "user", "content": "hi"} ],'
        b'\n "temperature":0 }'
    )
    assert h(orjson.loads(compact)) == h(orjson.loads(spaced))


def test_escaped_and_literal_unicode_are_the_same_request() -> None:
    escaped = orjson.loads(b'{"messages":[{"role":"user","content":"caf\\u00e9"}]}')
    literal = orjson.loads('{"messages":[{"role":"user","content":"café"}]}'.encode())
    assert h(escaped) == h(literal)


def test_integer_and_float_temperature_are_the_same_request() -> None:
    assert h(body(temperature=0)) == h(body(temperature=0.0))
    assert h(body(top_p=1)) == h(body(top_p=1.0))


def test_fields_that_change_the_answer_split_the_key() -> None:
    base = h(body())
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    changes: list[dict[str, Any]] = [
        {"temperature": 0.5},
        {"tools": [tool]},
        {"tool_choice": "none"},
        {"seed": 1},
        {"stop": ["\n"]},
        {"max_tokens": 51},
        {"max_completion_tokens": 50},
        {"n": 2},
        {"top_p": 0.9},
        {"logprobs": True},
        {"top_logprobs": 2},
        {"presence_penalty": 0.1},
        {"frequency_penalty": 0.1},
        {"logit_bias": {"50256": -100}},
        {"response_format": {"type": "json_object"}},
        {"reasoning_effort": "low"},  # a field this code does not know still counts
        {"messages": [{"role": "user", "content": "Name three primes!"}]},
    ]
    keys = {h(body(**change)) for change in changes}
    assert base not in keys
    assert len(keys) == len(changes)


def test_fields_that_do_not_change_the_answer_are_ignored() -> None:
    base = h(body())
    same: list[dict[str, Any]] = [
        {"user": "u-42"},
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"metadata": {"feature": "search"}},
        {"store": True},
        {"model": "another-name"},
        {"safety_identifier": "x"},
    ]
    assert all(h(body(**change)) == base for change in same)


def test_route_and_endpoint_are_part_of_the_request() -> None:
    assert h(body(), route="chat") != h(body(), route="chat-large")
    prompt = {"prompt": "hello", "temperature": 0}
    assert h(prompt, endpoint="completions") != h(prompt, endpoint=CHAT)


def test_route_name_cannot_run_into_the_body() -> None:
    # Without a length prefix "a" + "\x00b..." and "a\x00b" + "..." could hash the same text.
    assert request_hash("a", "b", {}) != request_hash("a\x00b", "", {})


def test_team_scope_separates_teams_and_shared_scope_does_not() -> None:
    digest = h(body())
    search = cache_key("tg:", "team", "search", digest)
    ads = cache_key("tg:", "team", "ads", digest)
    assert search != ads
    assert search == f"tg:{{team:search}}:cache:{digest}"
    assert cache_key("tg:", "shared", "search", digest) == cache_key("tg:", "shared", "ads", digest)
    assert cache_key("tg:", "shared", "ads", digest) == f"tg:cache:{digest}"
    assert lock_key(search).startswith("tg:{team:search}:")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_any_body_hashes_the_same_whatever_its_key_order(data: dict[str, Any]) -> None:
    assert h(data) == h(_reverse_keys(data))
    assert canonical_body(data) == canonical_body(orjson.loads(orjson.dumps(data)))


def test_key_cost_for_a_typical_1kb_body() -> None:
    typical = body(
        messages=[
            {"role": "system", "content": "You are a helpful assistant for a search product. " * 4},
            {"role": "user", "content": "Summarise the following result in two sentences: " * 12},
        ],
        user="end-user-1234",
        stream=True,
        stream_options={"include_usage": True},
    )
    size = len(orjson.dumps(typical))
    assert 900 < size < 1400
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        cache_key("tollgate:", "team", "search", request_hash("chat", CHAT, typical))
    per_key_us = (time.perf_counter() - started) / rounds * 1e6
    print(f"\ncache key for a {size} B body: {per_key_us:.2f} us")
