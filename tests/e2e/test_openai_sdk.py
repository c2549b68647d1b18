"""The openai SDK, unchanged, against the gateway: every endpoint and the happy paths."""

from __future__ import annotations

import tiktoken

from gateway.tokens import TokenCounter
from tests.e2e.conftest import ADS_KEY, Gateway

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_models_lists_only_the_teams_routes(gateway: Gateway) -> None:
    search = await gateway.client().models.list()
    assert sorted(m.id for m in search.data) == ["chat", "embed"]
    ads = await gateway.client(ADS_KEY).models.list()
    assert [m.id for m in ads.data] == ["embed"]
    model = await gateway.client().models.retrieve("chat")
    assert model.id == "chat" and model.object == "model"


async def test_each_routes_tokenizer_is_loaded_before_the_first_request(gateway: Gateway) -> None:
    loaded = gateway.services.pipeline.tokens.encodings
    assert set(loaded) == {"sim-chat", "sim-embed"}  # the first candidates' models


async def test_chat_completion(gateway: Gateway) -> None:
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=7
    )
    completion = raw.parse()
    # The body is the upstream's as it came: its model names the deployment's upstream model.
    assert completion.model == "sim-chat"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7
    assert completion.usage.prompt_tokens == TokenCounter().count_chat(MESSAGES, "sim-chat")
    assert completion.choices[0].finish_reason == "length"
    assert raw.headers["x-tollgate-route"] == "chat"
    assert raw.headers["x-tollgate-deployment"] == "sim-chat"
    assert raw.headers["x-tollgate-attempts"] == "1"
    assert raw.headers["x-request-id"].startswith("req_")


async def test_client_request_id_is_honoured(gateway: Gateway) -> None:
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, extra_headers={"x-request-id": "my-trace-42"}
    )
    assert raw.headers["x-request-id"] == "my-trace-42"


async def test_stream_with_usage(gateway: Gateway) -> None:
    stream = await gateway.client().chat.completions.create(
        model="chat",
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 12
    assert len(tiktoken.get_encoding("cl100k_base").encode(text)) == 12


async def test_stream_without_usage_hides_the_usage_chunk(gateway: Gateway) -> None:
    # The gateway asks the upstream for usage on every stream; a client that did not ask for it
    # must not receive the extra usage-only chunk.
    stream = await gateway.client().chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=5, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()


async def test_embeddings(gateway: Gateway) -> None:
    result = await gateway.client().embeddings.create(model="embed", input=["a", "b"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) > 0
    assert result.data[0].embedding != result.data[1].embedding
    floats = await gateway.client().embeddings.create(
        model="embed", input="a", encoding_format="float"
    )
    assert floats.data[0].embedding == result.data[0].embedding


async def test_completions(gateway: Gateway) -> None:
    result = await gateway.client().completions.create(model="chat", prompt="Say hi", max_tokens=4)
    assert result.choices[0].text
    assert result.usage is not None and result.usage.completion_tokens == 4


async def test_completions_stream(gateway: Gateway) -> None:
    stream = await gateway.client().completions.create(
        model="chat", prompt="Say hi", max_tokens=3, stream=True
    )
    texts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert "".join(texts).strip()


async def test_unknown_fields_pass_through(gateway: Gateway) -> None:
    completion = await gateway.client().chat.completions.create(
        model="chat",
        messages=MESSAGES,
        max_tokens=2,
        seed=7,
        user="end-user-1",
        extra_body={"some_future_field": {"x": 1}},
    )
    assert completion.choices


async def test_health_and_readiness(gateway: Gateway) -> None:
    health = await gateway.http.get("/healthz")
    assert health.status_code == 200
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["policy"]["ok"] and checks["database"]["ok"] and checks["state"]["ok"]
    assert checks["state"]["backend"] == "memory"
