"""Checking request bodies by hand: clear, field-naming errors without pydantic on the hot path.

Only what the gateway relies on (and what would otherwise surface as a confusing upstream error)
is checked; every other field is passed through untouched for the upstream to judge.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.providers.base import Endpoint

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {_kind(body)}.")
    return body


def check(endpoint: Endpoint, body: dict[str, Any]) -> None:
    """Raise :class:`InvalidRequest` naming the first field that is missing or mistyped."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise _wrong_type("model", model, "a non-empty string")
    _optional(body, "stream", bool)
    _optional_positive_int(body, "max_tokens")
    _optional_positive_int(body, "max_completion_tokens")
    _optional_positive_int(body, "n")
    _optional_number(body, "temperature")
    _optional_number(body, "top_p")
    _optional(body, "stream_options", dict)
    _optional(body, "user", str)
    if endpoint is Endpoint.CHAT:
        _check_messages(body)
    elif endpoint is Endpoint.COMPLETIONS:
        _check_prompt_like(body, "prompt")
    else:
        _check_prompt_like(body, "input")
        if body.get("stream"):
            raise InvalidRequest("Embeddings cannot be streamed.", param="stream")


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list):
        raise _wrong_type("messages", messages, "an array")
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, message, "an object")
        role = message.get("role")
        if role is None:
            raise InvalidRequest(f"Missing required parameter: '{where}.role'.", param=where)
        if role not in _ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': {_short(role)}. Supported values are: "
                + ", ".join(f"'{r}'" for r in sorted(_ROLES))
                + ".",
                param=f"{where}.role",
            )
        content = message.get("content")
        if content is None and role in ("user", "system", "developer"):
            raise InvalidRequest(
                f"Missing required parameter: '{where}.content'.", param=f"{where}.content"
            )
        if content is not None and not isinstance(content, str | list):
            raise _wrong_type(f"{where}.content", content, "a string or an array of parts")
    _optional(body, "tools", list)


def _check_prompt_like(body: dict[str, Any], field: str) -> None:
    value = body.get(field)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field)
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _wrong_type(field, value, "a string, an array of strings or an array of tokens")
    if not value:
        raise InvalidRequest(f"Invalid '{field}': empty array.", param=field)
    first = value[0]
    if isinstance(first, str):
        expected: type = str
    elif isinstance(first, int) and not isinstance(first, bool):
        expected = int
    elif isinstance(first, list):
        expected = list
    else:
        raise _wrong_type(f"{field}[0]", first, "a string, a token or an array of tokens")
    for index, item in enumerate(value):
        if not isinstance(item, expected) or isinstance(item, bool):
            raise _wrong_type(f"{field}[{index}]", item, _TYPE_NAMES[expected])
        if isinstance(item, list) and not all(
            isinstance(t, int) and not isinstance(t, bool) for t in item
        ):
            raise _wrong_type(f"{field}[{index}]", item, "an array of integer tokens")


def _optional(body: dict[str, Any], field: str, expected: type) -> None:
    value = body.get(field)
    if value is not None and not isinstance(value, expected):
        raise _wrong_type(field, value, _TYPE_NAMES[expected])


def _optional_positive_int(body: dict[str, Any], field: str) -> None:
    value = body.get(field)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong_type(field, value, "an integer")
    if value < 1:
        raise InvalidRequest(
            f"Invalid '{field}': integer below minimum value. Expected a value >= 1, "
            f"but got {value} instead.",
            param=field,
        )


def _optional_number(body: dict[str, Any], field: str) -> None:
    value = body.get(field)
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise _wrong_type(field, value, "a number")


def _wrong_type(field: str, value: object, expected: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{field}': expected {expected}, but got {_kind(value)} instead.",
        param=field,
    )


def _kind(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
