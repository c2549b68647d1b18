"""The ASGI stack as assembled by ``create_app``: the request context outermost, the raw lane for
the billed endpoints before FastAPI's own layers, and the OpenAI error format on every path.

No lifespan runs here, so the app has no services: every handler that needs them fails with
an unexpected error, which is what these tests want to see answered properly.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.middleware.errors import ServerErrorMiddleware

from gateway.api.completions import CompletionEndpoints
from gateway.api.context import RequestContext
from gateway.app import create_app
from gateway.settings import Settings

DEMO = Path(__file__).resolve().parents[2] / "policies" / "demo.yaml"


@pytest.fixture
def client(tmp_path: Path) -> httpx.AsyncClient:
    app = create_app(Settings(policy=DEMO, data_dir=tmp_path, access_log=False))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def assert_internal_error(answer: httpx.Response) -> None:
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    request_id = answer.headers["x-request-id"]
    error = answer.json()["error"]
    assert error["type"] == "api_error"
    assert error["message"] == (
        f"The gateway failed to handle this request (request id {request_id})."
    )


async def test_an_unexpected_error_in_a_fastapi_route_is_an_openai_500(
    client: httpx.AsyncClient,
) -> None:
    async with client:
        assert_internal_error(await client.get("/v1/models"))


async def test_an_unexpected_error_in_the_raw_lane_is_an_openai_500(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    async with client:
        answer = await client.post("/v1/chat/completions", json=body)
        assert_internal_error(answer)
        # The context stamps a client's own id and the gateway's on both kinds of answer.
        again = await client.get("/v1/models", headers={"x-request-id": "mine-1"})
    assert again.headers["x-request-id"] == "mine-1"
    assert again.headers["x-tollgate-request-id"].startswith("req_")


def test_the_context_and_the_raw_lane_wrap_fastapis_own_layers(tmp_path: Path) -> None:
    app = create_app(Settings(policy=DEMO, data_dir=tmp_path, access_log=False))
    stack = app.build_middleware_stack()
    assert isinstance(stack, RequestContext)
    assert isinstance(stack.app, CompletionEndpoints)
    assert isinstance(stack.app.app, ServerErrorMiddleware)  # FastAPI's stack, whole, inside


async def test_unknown_paths_and_methods_keep_their_openai_errors(
    client: httpx.AsyncClient,
) -> None:
    async with client:
        unknown = await client.get("/v1/nope")
        wrong_method = await client.get("/v1/chat/completions")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    assert "x-request-id" in unknown.headers
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
