"""Every billed request leaves exactly one ledger row in Postgres, with the right numbers, and
the metrics agree with the ledger."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.tokens import TokenCounter
from tests.e2e.conftest import SEARCH_KEY, Gateway, GatewayFactory, key_hash, sim_policy

MESSAGES = [{"role": "user", "content": "hi"}]
PROMPT = TokenCounter().count_chat(MESSAGES, "sim-chat")
POOR_KEY = "tg-poor-team-key-000001"


def _policy() -> str:
    text = sim_policy()
    # $1 / $2 per million tokens on the chat deployment; a team with almost no budget.
    text = text.replace(
        "  sim-chat:\n    provider: sim-fast\n    model: sim-chat\n",
        "  sim-chat:\n    provider: sim-fast\n    model: sim-chat\n"
        "    pricing: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n",
        1,
    )
    text = text.replace(
        "    candidates: [sim-chat]\n", "    candidates: [sim-chat]\n    cache: {}\n", 1
    )
    return text + (
        f'  poor:\n    keys: ["{key_hash(POOR_KEY)}"]\n    budgets: [{{tokens: 5, window: day}}]\n'
    )


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, postgres_url: str) -> Gateway:
    return await make_gateway(_policy(), database_url=postgres_url)


async def _rows(gateway: Gateway, postgres_url: str, *request_ids: str) -> dict[str, Any]:
    await gateway.services.ledger.flush()
    connection = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        records = await connection.fetch(
            "SELECT * FROM usage_ledger WHERE client_request_id = ANY($1::text[])",
            list(request_ids),
        )
    finally:
        await connection.close()
    return {r["client_request_id"]: dict(r) for r in records}


async def test_one_row_per_outcome(gateway: Gateway, postgres_url: str) -> None:
    client = gateway.client()

    def rid(name: str) -> dict[str, Any]:
        return {"extra_headers": {"x-request-id": name, "x-tollgate-tags": "feature=ledger"}}

    await client.chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=5, user="alice", **rid("ok-json")
    )
    stream = await client.chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=4, stream=True, **rid("ok-stream")
    )
    async for _ in stream:
        pass
    cached = {"model": "chat", "messages": MESSAGES, "max_tokens": 3, "temperature": 0}
    await client.chat.completions.create(**cached, **rid("miss"))  # type: ignore[call-overload]
    await client.chat.completions.create(**cached, **rid("hit"))  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError):
        await gateway.client(POOR_KEY).chat.completions.create(
            model="chat", messages=MESSAGES, **rid("refused")
        )
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="chat", messages=[], **rid("invalid"))
    await client.embeddings.create(model="embed", input=["a", "b"], **rid("embed"))

    rows = await _rows(
        gateway, postgres_url, "ok-json", "ok-stream", "miss", "hit", "refused", "invalid", "embed"
    )
    assert set(rows) == {"ok-json", "ok-stream", "miss", "hit", "refused", "invalid", "embed"}
    ok = rows["ok-json"]
    assert (ok["status"], ok["http_status"], ok["team"], ok["route"]) == (
        "ok",
        200,
        "search",
        "chat",
    )
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (PROMPT, 5)
    assert float(ok["cost_usd"]) == pytest.approx((PROMPT * 1 + 5 * 2) / 1e6)
    assert ok["deployment"] == "sim-chat" and ok["provider"] == "sim-fast"
    assert ok["end_user"] == "alice" and ok["tags"] == '{"feature": "ledger"}'
    assert ok["request_id"].startswith("req_") and ok["attempts"] == 1
    streamed = rows["ok-stream"]
    assert streamed["stream"] is True and streamed["completion_tokens"] == 4
    assert float(streamed["cost_usd"]) == pytest.approx((PROMPT + 4 * 2) / 1e6)
    hit = rows["hit"]
    assert hit["status"] == "cache_hit" and float(hit["cost_usd"]) == 0
    assert float(hit["cost_saved_usd"]) == pytest.approx(float(rows["miss"]["cost_usd"]))
    refused = rows["refused"]
    assert (refused["status"], refused["http_status"], refused["team"]) == (
        "rejected_budget",
        429,
        "poor",
    )
    assert float(refused["cost_usd"]) == 0 and refused["prompt_tokens"] == 0  # nothing charged
    assert (rows["invalid"]["status"], rows["invalid"]["http_status"]) == ("invalid_request", 400)
    assert rows["embed"]["route"] == "embed" and rows["embed"]["prompt_tokens"] > 0


async def test_upstream_failure_has_its_row(
    make_gateway: GatewayFactory, postgres_url: str
) -> None:
    text = _policy().replace(
        "  sim-fast:\n    type: sim\n", "  sim-fast:\n    type: sim\n    error_rate: 1.0\n", 1
    )
    gateway = await make_gateway(text, database_url=postgres_url)
    with pytest.raises(openai.InternalServerError):
        await gateway.client().chat.completions.create(
            model="chat", messages=MESSAGES, extra_headers={"x-request-id": "broken"}
        )
    row = (await _rows(gateway, postgres_url, "broken"))["broken"]
    assert (row["status"], row["http_status"]) == ("upstream_error", 502)
    assert float(row["cost_usd"]) == 0 and row["completion_tokens"] == 0


async def test_metrics_match_the_ledger(gateway: Gateway, postgres_url: str) -> None:
    client = gateway.client()
    names = [f"m-{i}" for i in range(12)]
    await asyncio.gather(
        *(
            client.chat.completions.create(
                model="chat",
                messages=MESSAGES,
                max_tokens=1 + i % 3,
                extra_headers={"x-request-id": name},
            )
            for i, name in enumerate(names)
        )
    )
    rows = await _rows(gateway, postgres_url, *names)
    text = (await gateway.http.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def total(name: str, **labels: str) -> float:
        return sum(
            value
            for (sample, found), value in samples.items()
            if sample == name and all(dict(found).get(k) == v for k, v in labels.items())
        )

    assert total("tollgate_requests_total", team="search", status="ok") == len(rows) == 12
    completion = sum(r["completion_tokens"] for r in rows.values())
    assert total("tollgate_tokens_total", team="search", kind="completion") == completion
    cost = sum(float(r["cost_usd"]) for r in rows.values())
    assert total("tollgate_cost_usd_total", team="search") == pytest.approx(cost)


async def test_the_callers_own_spend(gateway: Gateway, postgres_url: str) -> None:
    await gateway.client().chat.completions.create(model="chat", messages=MESSAGES, max_tokens=2)
    await gateway.services.ledger.flush()
    mine = await gateway.http.get(
        "/v1/tollgate/spend?by=route", headers={"authorization": f"Bearer {SEARCH_KEY}"}
    )
    assert mine.status_code == 200, mine.text
    assert mine.json()["team"] == "search"
    assert any(row["route"] == "chat" for row in mine.json()["rows"])
