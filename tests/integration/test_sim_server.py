"""``tollgate sim`` as a real process, driven by the official openai SDK."""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway import tokens
from tests.support.sim_process import sim_process

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello to the integration test.", "name": "tester"},
]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """The base URL (``.../v1``) of a ``tollgate sim`` process on a free port."""
    with sim_process("--model-name", "sim-test") as url:
        yield url


@pytest.fixture
def admin(sim_url: str) -> Iterator[httpx.Client]:
    """An HTTP client on the server root; the sim's config and stats are reset around each test."""
    with httpx.Client(base_url=sim_url.removesuffix("/v1"), timeout=10) as client:
        defaults = {"ttft_ms": 0, "tokens_per_s": 0, "error_rate": 0, "output": None}
        client.post("/sim/config", json=defaults).raise_for_status()
        client.post("/sim/stats/reset").raise_for_status()
        yield client
        client.post("/sim/config", json=defaults).raise_for_status()


@pytest.fixture
def client(sim_url: str, admin: httpx.Client) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim_url, api_key="sk-test", max_retries=0, timeout=30) as sdk:
        yield sdk


def test_chat_usage_matches_the_gateways_count(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
    assert answer.model == MODEL
    assert answer.id.startswith("chatcmpl-sim-")
    assert answer.choices[0].finish_reason == "length"
    text = answer.choices[0].message.content or ""
    assert tokens.count_text(text, MODEL) == 12
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == tokens.count_chat(MESSAGES, MODEL)
    assert answer.usage.completion_tokens == 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 12


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_completion_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert tokens.count_text(text, MODEL) == 20
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.usage is None for c in chunks[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        tokens.count_chat(MESSAGES, MODEL),
        20,
    )


def test_completions_plain_and_streamed(client: openai.OpenAI) -> None:
    answer = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon", max_tokens=5
    )
    assert tokens.count_text(answer.choices[0].text, "gpt-3.5-turbo-instruct") == 5
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == tokens.count_prompt("Once upon", "gpt-3.5-turbo-instruct")
    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt=[[1, 2, 3]],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert tokens.count_text(text, "gpt-3.5-turbo-instruct") == 64  # the sim's default
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3


def test_embeddings_base64_by_default_and_float(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hi")
    assert isinstance(
        raw.http_response.json()["data"][0]["embedding"], str
    )  # the SDK asked for base64
    decoded = raw.parse().data[0].embedding
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="hi", encoding_format="float"
    )
    assert floats.data[0].embedding == decoded
    assert len(decoded) == 16
    assert math.isclose(math.fsum(x * x for x in decoded), 1.0, rel_tol=1e-5)
    sized = client.embeddings.create(model="m", input=["a", "b"], dimensions=8)
    assert [len(d.embedding) for d in sized.data] == [8, 8]
    assert sized.usage.prompt_tokens == 2
    packed = base64.b64decode(raw.http_response.json()["data"][0]["embedding"])
    assert list(struct.unpack("<16f", packed)) == decoded


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["sim-test"]
    assert client.models.retrieve("anything").id == "anything"


def test_config_sets_ttft(client: openai.OpenAI, admin: httpx.Client) -> None:
    assert admin.post("/sim/config", json={"ttft_ms": 300}).json()["ttft_ms"] == 300
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, stream=True
    )
    next(iter(stream))
    assert time.perf_counter() - started >= 0.3
    stream.close()


def test_error_rate_gives_a_500(client: openai.OpenAI, admin: httpx.Client) -> None:
    admin.post("/sim/config", json={"error_rate": 1.0}).raise_for_status()
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 500
    assert caught.value.code == "sim_error"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert admin.get("/sim/stats").json()["errors"] == 2


def test_bad_requests(client: openai.OpenAI, admin: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_body={"max_tokens": "x"}
        )
    broken = admin.post("/v1/chat/completions", content=b"{oops")
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"
    assert admin.post("/sim/config", json={"ttft_ms": -5}).status_code == 400
    assert admin.get("/nowhere").status_code == 404
    assert admin.get("/healthz").json() == {"status": "ok"}


def test_stats_count_calls_and_cancellations(client: openai.OpenAI, admin: httpx.Client) -> None:
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    client.completions.create(model="m", prompt="x", max_tokens=1)
    client.embeddings.create(model="m", input="x")
    admin.post("/sim/config", json={"tokens_per_s": 20}).raise_for_status()
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=200, stream=True
    )
    next(iter(stream))
    stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while (stats := admin.get("/sim/stats").json())[
        "cancelled"
    ] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["calls"] == 4
    assert stats["by_endpoint"] == {"chat/completions": 2, "completions": 1, "embeddings": 1}
    assert (stats["completed"], stats["cancelled"], stats["in_flight"], stats["errors"]) == (
        3,
        1,
        0,
        0,
    )
    reset = admin.post("/sim/stats/reset").json()
    assert reset["calls"] == 0
