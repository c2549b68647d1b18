"""The litellm provider, for real: litellm's OpenAI-compatible client calling a `tollgate sim`.

No cloud API is reachable here, so litellm talks to the simulator through its own
``openai/<model>`` provider with ``api_base``: the adapter's translation, streaming and error
mapping are exercised exactly as they would be for Anthropic or Bedrock.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.conftest import GatewayFactory, sim_policy
from tests.support.sim_process import sim_admin, sim_process


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with sim_process("--model-name", "sim-chat") as url:
        yield url


def _policy(sim_url: str) -> str:
    text = sim_policy(chat_candidates="[via-litellm]")
    text = text.replace(
        "providers:\n",
        f"providers:\n  lite:\n    type: litellm\n    api_key: sk-none\n    api_base: {sim_url}\n",
        1,
    )
    return text.replace(
        "models:\n",
        "models:\n  via-litellm:\n    provider: lite\n    model: openai/sim-chat\n"
        "    pricing: free\n",
        1,
    )


async def test_chat_and_stream_through_litellm(make_gateway: GatewayFactory, sim_url: str) -> None:
    gateway = await make_gateway(_policy(sim_url))
    client = gateway.client()
    completion = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    stream = await client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    # litellm was imported only because this policy has a litellm provider.
    assert "litellm" in sys.modules


async def test_litellm_upstream_failure_is_a_5xx(
    make_gateway: GatewayFactory, sim_url: str
) -> None:
    gateway = await make_gateway(_policy(sim_url))
    with sim_admin(sim_url) as admin:
        admin.post("/sim/config", json={"error_rate": 1.0}).raise_for_status()
        try:
            with pytest.raises(openai.APIStatusError) as caught:
                await gateway.client().chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}]
                )
        finally:
            admin.post("/sim/config", json={"error_rate": 0.0}).raise_for_status()
    assert caught.value.status_code >= 500
