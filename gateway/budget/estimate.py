"""What a request may cost before it runs, and what it did cost after (pure functions).

The estimate reserved is the prompt's tokens plus, for each completion the request asks for, the
most tokens it may generate: ``max_completion_tokens``, else ``max_tokens``, else the team's
``max_tokens``, else ``defaults.max_tokens``. A request asking for more than the team's
``max_tokens`` is clamped to it (``on_cap: clamp``: the body is rewritten, so the upstream cannot
generate more than was reserved) or refused (``on_cap: reject``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.budget.plan import Charge, cost_nano
from gateway.errors import InvalidRequest
from gateway.policy.schema import Defaults, Team

_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens")


@dataclass(frozen=True, slots=True)
class Completion:
    """How much a request may generate: ``choices`` completions of at most ``limit`` tokens.

    ``rewrites`` are the body fields to set (field, value) so the upstream honours the cap; empty
    when nothing was clamped. ``limit`` is 0 for requests that generate nothing (embeddings).
    """

    limit: int
    choices: int = 1
    rewrites: tuple[tuple[str, int], ...] = ()

    @property
    def max_tokens(self) -> int:
        """The most completion tokens the request may produce in all."""
        return self.limit * self.choices

    def apply(self, body: dict[str, Any]) -> None:
        """Write the clamped limits into the request body."""
        for field, value in self.rewrites:
            body[field] = value


NO_COMPLETION = Completion(limit=0)


def completion_limit(body: Mapping[str, Any], team: Team | None, defaults: Defaults) -> Completion:
    """The effective completion limit of a chat or completions request (see the module doc).

    Raises :class:`InvalidRequest` when the request asks for more than the team's cap and the
    team says ``on_cap: reject``.
    """
    cap = team.max_tokens if team is not None else None
    asked = {field: _positive_int(body.get(field)) for field in _LIMIT_FIELDS}
    requested = asked["max_completion_tokens"] or asked["max_tokens"]
    choices = max(_positive_int(body.get("n")) or 1, _positive_int(body.get("best_of")) or 1)
    if requested is None:
        return Completion(cap if cap is not None else defaults.max_tokens, choices)
    if cap is None or requested <= cap:
        return Completion(requested, choices)
    assert team is not None
    field = "max_completion_tokens" if asked["max_completion_tokens"] else "max_tokens"
    if team.on_cap == "reject":
        raise InvalidRequest(
            f"'{field}' is {requested}, above this team's limit of {cap} tokens per completion. "
            f"Ask for at most {cap}.",
            param=field,
            code="max_tokens_exceeded",
        )
    rewrites = tuple(
        (name, cap) for name, value in asked.items() if value is not None and value > cap
    )
    return Completion(cap, choices, rewrites)


def estimate(
    prompt_tokens: int,
    completion: Completion,
    input_usd_per_token: float,
    output_usd_per_token: float,
) -> Charge:
    """The most a request may cost: its prompt plus every completion at its limit."""
    return charge_for(
        prompt_tokens, completion.max_tokens, input_usd_per_token, output_usd_per_token
    )


def charge_for(
    prompt_tokens: int,
    completion_tokens: int,
    input_usd_per_token: float,
    output_usd_per_token: float,
) -> Charge:
    """What a request used, priced (nano-dollars rounded up, as the estimate is)."""
    nano = cost_nano(prompt_tokens, input_usd_per_token) + cost_nano(
        completion_tokens, output_usd_per_token
    )
    return Charge(prompt_tokens + completion_tokens, nano)


def _positive_int(value: Any) -> int | None:
    # bool is an int in Python; a JSON true is not a token count.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
