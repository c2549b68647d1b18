"""The affinity key: requests that start alike share a key; others do not."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.routing import affinity_key

SYSTEM = {"role": "system", "content": "You are a support agent for Acme. " * 20}


def chat(*messages: Mapping[str, object]) -> dict[str, object]:
    return {"model": "chat", "messages": list(messages)}


def test_requests_sharing_a_system_prompt_share_a_key() -> None:
    first = affinity_key(chat(SYSTEM, {"role": "user", "content": "my order is late"}))
    second = affinity_key(chat(SYSTEM, {"role": "user", "content": "reset my password"}))
    assert first is not None and first == second
    other = {"role": "system", "content": "You are a poet."}
    assert affinity_key(chat(other, {"role": "user", "content": "my order is late"})) != first


def test_several_leading_system_messages_and_content_parts() -> None:
    parts = {"role": "developer", "content": [{"type": "text", "text": "be brief"}]}
    key = affinity_key(chat(SYSTEM, parts, {"role": "user", "content": "hi"}))
    assert key is not None
    assert key != affinity_key(chat(SYSTEM, {"role": "user", "content": "hi"}))


def test_without_a_system_prompt_a_conversation_keys_on_its_first_turn() -> None:
    opening = {"role": "user", "content": "Let us plan a trip to Lisbon."}
    turn_two = chat(
        opening, {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Day 1?"}
    )
    messages = turn_two["messages"]
    assert isinstance(messages, list)
    turn_three = chat(*messages, {"role": "user", "content": "Day 2?"})
    assert affinity_key(turn_two) is not None
    assert affinity_key(turn_two) == affinity_key(turn_three)
    assert affinity_key(chat(opening)) is None  # a lone message: nothing to reuse


def test_only_the_start_of_a_long_prefix_is_hashed() -> None:
    long_a = {"role": "system", "content": "x" * 5000 + "a"}
    long_b = {"role": "system", "content": "x" * 5000 + "b"}
    user = {"role": "user", "content": "hi"}
    assert affinity_key(chat(long_a, user)) == affinity_key(chat(long_b, user))
    assert affinity_key(chat(long_a, user), max_chars=10_000) != affinity_key(
        chat(long_b, user), max_chars=10_000
    )


def test_completions_and_embeddings() -> None:
    assert affinity_key({"prompt": "Translate: hello"}) == affinity_key(
        {"prompt": "Translate: hello"}
    )
    assert affinity_key({"prompt": ["Translate: hello", "other"]}) == affinity_key(
        {"prompt": "Translate: hello"}
    )
    assert affinity_key({"prompt": [1, 2, 3]}) is not None
    assert affinity_key({"prompt": ""}) is None
    assert affinity_key({"input": "embed me"}) is None
