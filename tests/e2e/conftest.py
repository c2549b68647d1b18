"""The real application, in process: the openai SDK talks to it through httpx's ASGI transport."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from gateway.app import Services, create_app
from gateway.settings import Settings
from tests.support.gateway_process import ADMIN_KEY

SEARCH_KEY = "tg-search-static-key-0001"
ADS_KEY = "tg-ads-static-key-00001"


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def sim_policy(extra: str = "", chat_candidates: str = "[sim-chat]") -> str:
    """A policy with in-process simulated models, two teams with static keys, and ``extra``."""
    return f"""
providers:
  sim-fast:
    type: sim
  sim-embed:
    type: sim
models:
  sim-chat:
    provider: sim-fast
    model: sim-chat
  sim-embed:
    provider: sim-embed
    model: sim-embed
routes:
  chat:
    candidates: {chat_candidates}
  embed:
    candidates: [sim-embed]
teams:
  search:
    routes: [chat, embed]
    keys: ["{key_hash(SEARCH_KEY)}"]
  ads:
    routes: [embed]
    keys: ["{key_hash(ADS_KEY)}"]
{extra}
"""


@dataclass
class Gateway:
    app: FastAPI
    http: httpx.AsyncClient
    settings: Settings

    @property
    def services(self) -> Services:
        found: Services = self.app.state.services
        return found

    def client(self, key: str = SEARCH_KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key=key, http_client=self.http, max_retries=0
        )


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Build a gateway from policy text; its lifespan runs and ends with the test."""
    exits: list[Callable[[], Awaitable[Any]]] = []

    async def make(policy_text: str, **overrides: Any) -> Gateway:
        policy_dir = tmp_path / f"policies-{len(exits)}"
        policy_dir.mkdir()
        (policy_dir / "policy.yaml").write_text(policy_text)
        fields: dict[str, Any] = {
            "policy": policy_dir,
            "data_dir": tmp_path / "data",
            "admin_key": ADMIN_KEY,
            "access_log": True,
        }
        fields.update(overrides)
        settings = Settings(**fields)
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")

        async def close() -> None:
            await http.aclose()
            await lifespan.__aexit__(None, None, None)

        exits.append(close)
        return Gateway(app, http, settings)

    yield make
    for close in reversed(exits):
        await close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(sim_policy())
