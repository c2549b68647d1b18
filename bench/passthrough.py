"""The issue's reference point: a minimal FastAPI passthrough proxy, to calibrate a host.

The performance issue quotes "a minimal FastAPI passthrough proxy does about 4,700 requests/s"
on a 2-core machine. This is that proxy: one route that forwards the request body as bytes to
the bench stub and returns the answer, nothing else (no auth, no counting, no state). Run it
next to the gateway and drive both with wrk, alternating, to see what the host gives a bare
proxy at the time of a run::

    .venv/bin/python -m bench.stub --port 9001 &
    UPSTREAM=http://127.0.0.1:9001 .venv/bin/uvicorn bench.passthrough:app --port 9002 \\
        --loop uvloop --http httptools --no-access-log
    printf '%s\n' 'wrk.method = "POST"' 'wrk.headers["Content-Type"] = "application/json"' \
        'wrk.body = [[{"model":"chat","messages":[{"role":"user","content":"hi"}]}]]' \
        > /tmp/post.lua
    wrk -t1 -c16 -d8s -s /tmp/post.lua http://127.0.0.1:9002/v1/chat/completions

A request with ``"stream": true`` is relayed as it arrives (each chunk the upstream sends is
passed on at once), and ``/<prefix>/v1/chat/completions`` goes to the stub's route of that
prefix (``/real/...``: the model-like paced stub), so the harness can set the bare proxy's
streams beside the gateway's (``bench.run``'s reference section does).

``PASSTHROUGH_CLIENT=httpx`` uses httpx (what the openai SDK uses) instead of aiohttp for the
upstream call. Neither client is a dependency of the gateway; both come with the test extras'
packages (litellm brings aiohttp, openai brings httpx).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from bench.stub import STREAM_MARKERS

UPSTREAM_PATH = "/fast/v1/chat/completions"
_JSON = {"content-type": "application/json"}


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    upstream = os.environ.get("UPSTREAM", "http://127.0.0.1:9001")
    if os.environ.get("PASSTHROUGH_CLIENT", "aiohttp") == "httpx":
        import httpx

        client: Any = httpx.AsyncClient(base_url=upstream, limits=httpx.Limits(max_connections=512))
        app.state.forward = lambda path, body: _httpx(client, path, body)
        app.state.stream = lambda path, body: _httpx_stream(client, path, body)
    else:
        import aiohttp

        client = aiohttp.ClientSession(upstream, connector=aiohttp.TCPConnector(limit=512))
        app.state.forward = lambda path, body: _aiohttp(client, path, body)
        app.state.stream = lambda path, body: _aiohttp_stream(client, path, body)
    try:
        yield
    finally:
        await (client.aclose() if hasattr(client, "aclose") else client.close())


async def _httpx(client: Any, path: str, body: bytes) -> Response:
    answer = await client.post(path, content=body, headers=_JSON)
    return Response(answer.content, answer.status_code, media_type="application/json")


async def _httpx_stream(client: Any, path: str, body: bytes) -> Response:
    answer = await client.send(
        client.build_request("POST", path, content=body, headers=_JSON), stream=True
    )

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for data in answer.aiter_raw():
                yield data
        finally:
            await answer.aclose()

    kind = answer.headers.get("content-type", "text/event-stream")
    return StreamingResponse(relay(), answer.status_code, media_type=kind)


async def _aiohttp(client: Any, path: str, body: bytes) -> Response:
    async with client.post(path, data=body, headers=_JSON) as answer:
        return Response(await answer.read(), answer.status, media_type="application/json")


async def _aiohttp_stream(client: Any, path: str, body: bytes) -> Response:
    answer = await client.post(path, data=body, headers=_JSON)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for data in answer.content.iter_any():
                yield data
        finally:
            answer.release()

    kind = answer.headers.get("content-type", "text/event-stream")
    return StreamingResponse(relay(), answer.status, media_type=kind)


app = FastAPI(lifespan=_lifespan)


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    """Forward the body as it came; answer with the upstream's."""
    forward: Any = request.app.state.forward
    response: Response = await forward(UPSTREAM_PATH, await request.body())
    return response


@app.post("/{prefix}/v1/chat/completions")
async def chat_at(prefix: str, request: Request) -> Response:
    """Forward to the stub's route under ``prefix``; a stream is relayed chunk by chunk."""
    body = await request.body()
    path = f"/{prefix}/v1/chat/completions"
    relay: Any = (
        request.app.state.stream
        if any(marker in body for marker in STREAM_MARKERS)
        else request.app.state.forward
    )
    response: Response = await relay(path, body)
    return response
