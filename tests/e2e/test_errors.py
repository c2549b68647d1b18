"""Bad input: every case reaches the openai SDK as the right exception, and serving goes on."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import ADS_KEY, SEARCH_KEY, Gateway

MESSAGES = [{"role": "user", "content": "hi"}]


async def _still_serves(gateway: Gateway) -> None:
    completion = await gateway.client().chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=1
    )
    assert completion.choices


def _envelope(body: dict[str, object]) -> dict[str, object]:
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_malformed_json(gateway: Gateway) -> None:
    response = await gateway.http.post(
        "/v1/chat/completions",
        content=b'{"model": "chat", "messages": [',
        headers={"authorization": f"Bearer {SEARCH_KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = _envelope(response.json())
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in str(error["message"])
    assert response.headers["x-request-id"]
    await _still_serves(gateway)


async def test_body_that_is_not_an_object(gateway: Gateway) -> None:
    response = await gateway.http.post(
        "/v1/chat/completions", content=b"[1, 2]", headers={"authorization": f"Bearer {SEARCH_KEY}"}
    )
    assert response.status_code == 400
    assert "JSON object" in str(_envelope(response.json())["message"])


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "chat"}, "messages", "Missing required parameter"),
        ({"model": "chat", "messages": []}, "messages", "empty array"),
        ({"model": "chat", "messages": "hi"}, "messages", "expected an array"),
        ({"messages": MESSAGES}, "model", "Missing required parameter"),
        ({"model": 3, "messages": MESSAGES}, "model", "expected a non-empty string"),
        ({"model": "chat", "messages": MESSAGES, "max_tokens": "ten"}, "max_tokens", "integer"),
        ({"model": "chat", "messages": MESSAGES, "max_tokens": 0}, "max_tokens", ">= 1"),
        ({"model": "chat", "messages": MESSAGES, "stream": "yes"}, "stream", "boolean"),
        ({"model": "chat", "messages": [{"content": "x"}]}, "messages[0]", "role"),
        (
            {"model": "chat", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "wizard",
        ),
        (
            {"model": "chat", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "string",
        ),
        ({"model": "chat", "messages": MESSAGES, "temperature": "hot"}, "temperature", "number"),
    ],
)
async def test_wrong_fields_are_named(
    gateway: Gateway, body: dict[str, object], param: str, words: str
) -> None:
    # The SDK's own request path (its typed helpers refuse to send some of these bodies).
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().post("/chat/completions", body=body, cast_to=object)
    error = _envelope(caught.value.response.json())
    assert error["param"] == param
    assert words in str(error["message"])


async def test_wrong_prompt_and_input_types(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError, match="prompt"):
        await gateway.client().completions.create(model="chat", prompt=[1, "a"])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="input"):
        await gateway.client().embeddings.create(model="embed", input=[])


async def test_body_over_the_limit_is_413(gateway: Gateway) -> None:
    big = (
        b'{"model": "chat", "messages": [{"role": "user", "content": "'
        + b"x" * (50 * 1024 * 1024)
        + b'"}]}'
    )
    response = await gateway.http.post(
        "/v1/chat/completions", content=big, headers={"authorization": f"Bearer {SEARCH_KEY}"}
    )
    assert response.status_code == 413
    assert _envelope(response.json())["code"] == "request_too_large"
    await _still_serves(gateway)


async def test_unknown_route_is_not_found(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await gateway.client().chat.completions.create(model="gpt-5-mimi", messages=MESSAGES)
    assert _envelope(caught.value.response.json())["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await gateway.client().models.retrieve("gpt-5-mimi")


async def test_route_of_another_team_is_forbidden(gateway: Gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.client(ADS_KEY).chat.completions.create(model="chat", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError):
        await gateway.client(ADS_KEY).models.retrieve("chat")


async def test_missing_and_unknown_keys(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        await gateway.client("tg-not-a-real-key").chat.completions.create(
            model="chat", messages=MESSAGES
        )
    response = await gateway.http.post("/v1/chat/completions", json={"model": "chat"})
    assert response.status_code == 401
    assert "Missing API key" in str(_envelope(response.json())["message"])
    response = await gateway.http.get("/v1/models", headers={"authorization": "Basic abc"})
    assert response.status_code == 401


async def test_azure_style_api_key_header(gateway: Gateway) -> None:
    response = await gateway.http.get("/v1/models", headers={"api-key": SEARCH_KEY})
    assert response.status_code == 200


async def test_revoked_and_expired_keys(make_gateway: object) -> None:
    import asyncio
    from datetime import timedelta

    from tests.e2e.conftest import sim_policy

    gateway: Gateway = await make_gateway(sim_policy(), key_cache_ttl_s=0)  # type: ignore[operator]
    store = gateway.services.key_store
    key, record = await store.create("search", name="ci-bot")
    assert (await gateway.client(key).models.list()).data
    await store.revoke(record.id)
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        await gateway.client(key).models.list()
    expiring, _ = await store.create("search", expires_in=timedelta(milliseconds=300))
    assert (await gateway.client(expiring).models.list()).data
    await asyncio.sleep(0.4)
    with pytest.raises(openai.AuthenticationError, match="expired"):
        await gateway.client(expiring).models.list()


async def test_unknown_v1_path_is_openai_404(gateway: Gateway) -> None:
    response = await gateway.http.post(
        "/v1/responses", json={}, headers={"authorization": f"Bearer {SEARCH_KEY}"}
    )
    assert response.status_code == 404
    assert "Unknown request URL" in str(_envelope(response.json())["message"])
    response = await gateway.http.get("/nothing-here")
    assert response.status_code == 404
    _envelope(response.json())


async def test_a_wrong_method_on_an_openai_endpoint_is_405(gateway: Gateway) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        response = await gateway.http.get(path, headers={"authorization": f"Bearer {SEARCH_KEY}"})
        assert response.status_code == 405, path
        assert response.headers["allow"] == "POST"
        assert _envelope(response.json())["code"] == "method_not_allowed"
    # The gateway keeps serving.
    ok = await gateway.http.get("/v1/models", headers={"authorization": f"Bearer {SEARCH_KEY}"})
    assert ok.status_code == 200


async def test_admin_needs_the_admin_key(gateway: Gateway) -> None:
    response = await gateway.http.post(
        "/admin/policy/reload", headers={"authorization": "Bearer x"}
    )
    assert response.status_code == 401
    _envelope(response.json())


async def test_admin_is_absent_without_an_admin_key(make_gateway: object) -> None:
    from tests.e2e.conftest import sim_policy

    gateway: Gateway = await make_gateway(sim_policy(), admin_key=None)  # type: ignore[operator]
    response = await gateway.http.post("/admin/policy/reload")
    assert response.status_code == 404
    _envelope(response.json())
