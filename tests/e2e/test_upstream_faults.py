"""Upstreams that refuse, stall, fail, lie or cut off: clear errors, failover, and no harm done."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from gateway.tokens import TokenCounter
from tests.e2e.conftest import SEARCH_KEY, Gateway, GatewayFactory, sim_policy
from tests.support.bad_upstream import BadUpstream, bad_upstream, closed_port

MESSAGES = [{"role": "user", "content": "hi"}]
_AUTH = {"authorization": f"Bearer {SEARCH_KEY}"}


@pytest.fixture
async def upstream() -> AsyncIterator[BadUpstream]:
    async with bad_upstream() as server:
        yield server


def _policy(url: str, candidates: str = "[broken]", timeout_s: float = 5.0) -> str:
    """``broken`` points at ``url``; ``sim-chat`` is a healthy in-process candidate."""
    text = sim_policy(chat_candidates=candidates)
    text = text.replace(
        "providers:\n",
        f"providers:\n  bad:\n    type: openai\n    base_urls: [{url}]\n",
        1,
    )
    text = text.replace(
        "models:\n",
        "models:\n  broken:\n    provider: bad\n    model: bad-model\n    pricing: free\n",
        1,
    )
    return text.replace(
        f"    candidates: {candidates}\n",
        f"    candidates: {candidates}\n    timeout_s: {timeout_s}\n",
        1,
    )


async def _healthy(gateway: Gateway) -> None:
    # After any fault the gateway keeps serving: the embed route does not touch the bad upstream.
    result = await gateway.client().embeddings.create(model="embed", input="still here")
    assert result.data


async def test_connection_refused(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(_policy(f"http://127.0.0.1:{closed_port()}/v1"))
    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.client().chat.completions.create(model="chat", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "could not connect" in caught.value.message
    await _healthy(gateway)


async def test_failover_to_the_next_candidate(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(
        _policy(f"http://127.0.0.1:{closed_port()}/v1", candidates="[broken, sim-chat]")
    )
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=3
    )
    assert raw.headers["x-tollgate-deployment"] == "sim-chat"
    assert raw.headers["x-tollgate-attempts"] == "2"
    assert raw.parse().usage.completion_tokens == 3  # type: ignore[union-attr]


async def test_stream_fails_over_before_the_first_byte(
    make_gateway: GatewayFactory, upstream: BadUpstream
) -> None:
    gateway = await make_gateway(
        _policy(upstream.url("error-500"), candidates="[broken, sim-chat]")
    )
    stream = await gateway.client().chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=3, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.strip()
    assert upstream.calls["error-500"] == 1


async def test_timeout(make_gateway: GatewayFactory, upstream: BadUpstream) -> None:
    gateway = await make_gateway(_policy(upstream.url("slow"), timeout_s=0.3))
    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.client().chat.completions.create(model="chat", messages=MESSAGES)
    assert caught.value.status_code == 504
    assert "timed out" in caught.value.message
    await _healthy(gateway)


async def test_upstream_500_keeps_its_message(
    make_gateway: GatewayFactory, upstream: BadUpstream
) -> None:
    gateway = await make_gateway(_policy(upstream.url("error-500")))
    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.client().chat.completions.create(model="chat", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "the GPU caught fire" in caught.value.message
    await _healthy(gateway)


async def test_upstream_429_is_a_rate_limit(
    make_gateway: GatewayFactory, upstream: BadUpstream
) -> None:
    gateway = await make_gateway(_policy(upstream.url("rate-limited")))
    with pytest.raises(openai.RateLimitError, match="slow down"):
        await gateway.client().chat.completions.create(model="chat", messages=MESSAGES)


async def test_upstream_400_is_forwarded_as_it_came(
    make_gateway: GatewayFactory, upstream: BadUpstream
) -> None:
    gateway = await make_gateway(
        _policy(upstream.url("bad-request"), candidates="[broken, sim-chat]")
    )
    with pytest.raises(openai.BadRequestError, match="temperature is too hot"):
        await gateway.client().chat.completions.create(model="chat", messages=MESSAGES)
    # A client error is the client's: no failover to the next candidate.
    assert upstream.calls["bad-request"] == 1


async def test_invalid_json(make_gateway: GatewayFactory, upstream: BadUpstream) -> None:
    gateway = await make_gateway(_policy(upstream.url("invalid-json")))
    with pytest.raises(openai.InternalServerError, match="invalid JSON"):
        await gateway.client().chat.completions.create(model="chat", messages=MESSAGES)
    await _healthy(gateway)


async def _read_cut_stream(gateway: Gateway) -> list[str | None]:
    """The deltas of a stream the upstream cuts off, which ends with the gateway's error event."""
    stream = await gateway.client().chat.completions.create(
        model="chat", messages=MESSAGES, stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match=r"upstream stream from .* broke"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    return received


async def test_stream_cut_half_way_ends_with_an_error_event(
    make_gateway: GatewayFactory, upstream: BadUpstream
) -> None:
    gateway = await make_gateway(
        _policy(upstream.url("cut-stream"), candidates="[broken, sim-chat]")
    )
    received = await _read_cut_stream(gateway)
    # Bytes had reached the client, so there was no failover: the stream says it broke instead.
    assert received == ["tok0 ", "tok1 ", "tok2 "]
    assert upstream.calls["cut-stream"] == 1
    await _healthy(gateway)


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
async def test_a_cut_stream_without_usage_pays_for_the_text_it_relayed(
    make_gateway: GatewayFactory, upstream: BadUpstream, cache: bool
) -> None:
    """No usage came, so the text relayed is counted: parsed by the relay, or taken from the
    cache's assembler, which parsed each event already, on a route that caches."""
    policy = _policy(upstream.url("cut-stream")).replace(
        "  search:\n", "  search:\n    budgets: [{tokens: 100000, window: day}]\n", 1
    )
    gateway = await make_gateway(policy + ("cache:\n  mode: all\n" if cache else ""))
    received = await _read_cut_stream(gateway)
    assert received == ["tok0 ", "tok1 ", "tok2 "]
    counter = TokenCounter()
    prompt = counter.count_chat(MESSAGES, "bad-model")
    completion = counter.count_text("tok0 tok1 tok2 ", "bad-model")
    found = await gateway.http.get("/v1/tollgate/budget", headers=_AUTH)
    window = next(w for w in found.json()["windows"] if w["unit"] == "tokens")
    # Settled before the error event was sent: exact at once.
    assert (window["used"], window["reserved"]) == (prompt + completion, 0)
