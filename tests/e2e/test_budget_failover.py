"""Failover to a dearer deployment extends the reservation first; a dollar cap is never
overshot, failover included."""

from __future__ import annotations

import openai
import pytest

from gateway.tokens import TokenCounter
from tests.e2e.conftest import GatewayFactory, key_hash
from tests.support.bad_upstream import closed_port

KEY = "tg-failover-budget-0001"
MESSAGES = [{"role": "user", "content": "hi"}]
PROMPT = TokenCounter().count_chat(MESSAGES, "dear")


def _policy(usd: float) -> str:
    # "cheap" refuses connections; "dear" is a healthy simulator at 100x the price.
    return f"""
providers:
  down: {{type: openai, base_urls: ["http://127.0.0.1:{closed_port()}/v1"]}}
  sim: {{type: sim}}
models:
  cheap: {{provider: down, model: cheap, pricing: {{input_per_mtok: 1, output_per_mtok: 1}}}}
  dear: {{provider: sim, model: dear, pricing: {{input_per_mtok: 100, output_per_mtok: 100}}}}
routes:
  chat: {{candidates: [cheap, dear], strategy: ordered}}
teams:
  search:
    keys: ["{key_hash(KEY)}"]
    budgets: [{{usd: {usd}, window: month}}]
"""


async def _spent(gateway: object) -> tuple[int, int]:
    services = gateway.services  # type: ignore[attr-defined]
    await services.background.drain()
    policy = services.policies.current
    [window] = await services.limiter.snapshot(services.pipeline.plans.get(policy, "search"))
    return window.used, window.reserved


async def test_failover_extends_the_hold_when_the_budget_covers_it(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(_policy(usd=1.0))
    raw = await gateway.client(KEY).chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=10
    )
    assert raw.headers["x-tollgate-deployment"] == "dear"
    assert raw.headers["x-tollgate-attempts"] == "2"
    used, reserved = await _spent(gateway)
    assert reserved == 0
    assert used == (PROMPT + 10) * 100 * 1000  # nano-dollars at the dear price ($100/M = 100 n$)


async def test_a_dearer_candidate_the_budget_cannot_cover_is_skipped(
    make_gateway: GatewayFactory,
) -> None:
    # Enough for the cheap candidate's worst case, not for the dear one's.
    cheap_worst = (PROMPT + 10) * 1e-6
    gateway = await make_gateway(_policy(usd=round(cheap_worst * 5, 9)))
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.client(KEY).chat.completions.create(
            model="chat", messages=MESSAGES, max_tokens=10
        )
    # The cheap candidate failed and the dear one was never called: the upstream's error
    # stands, and nothing was spent.
    assert caught.value.status_code == 502
    assert "could not connect" in caught.value.message
    used, reserved = await _spent(gateway)
    assert (used, reserved) == (0, 0)
