"""A uvicorn server in the test's own event loop, serving through the gateway's protocol."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Literal

import uvicorn

from gateway.cli.http_protocol import GatewayHttpProtocol


@contextlib.asynccontextmanager
async def uvicorn_server(
    app: object, lifespan: Literal["on", "off"] = "off"
) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """uvicorn serving ``app`` on a free loopback port, as ``tollgate serve`` runs it; yields
    the server (started) and its port, and stops it on the way out."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=GatewayHttpProtocol,
        ws="none",
        lifespan=lifespan,
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, it has no event)
            await asyncio.sleep(0.01)
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        await serving
