"""A gateway killed with SIGKILL under load loses no ledger row of a request that was answered."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import httpx

from tests.e2e.conftest import key_hash
from tests.support.gateway_process import serve

KEY = "tg-ledger-kill-key-0001"
POLICY = f"""
providers:
  sim: {{type: sim, ttft_ms: 5}}
models:
  sim-chat: {{provider: sim, model: sim-chat, pricing: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
  chat: {{candidates: [sim-chat]}}
teams:
  search:
    keys: ["{key_hash(KEY)}"]
"""


async def _answered_ids(url: str, total: int, kill_after: int, kill: asyncio.Event) -> set[str]:
    """Send ``total`` requests, 40 at a time; set ``kill`` after ``kill_after`` answers."""
    answered: set[str] = set()
    queue = iter(range(total))

    async def worker(http: httpx.AsyncClient) -> None:
        for i in queue:
            name = f"kill-{i}"
            try:
                response = await http.post(
                    f"{url}/chat/completions",
                    json={
                        "model": "chat",
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 2,
                    },
                    headers={"authorization": f"Bearer {KEY}", "x-request-id": name},
                )
            except httpx.HTTPError:
                continue  # the process died under this request: no answer, no promise
            if response.status_code == 200:
                answered.add(name)
                if len(answered) >= kill_after:
                    kill.set()

    async with httpx.AsyncClient(timeout=10) as http:
        await asyncio.gather(*(worker(http) for _ in range(40)))
    return answered


async def test_sigkill_mid_traffic_loses_no_answered_row(tmp_path: Path, postgres_url: str) -> None:
    policy = tmp_path / "policies"
    policy.mkdir()
    (policy / "p.yaml").write_text(POLICY)
    env = {"TOLLGATE_DATABASE_URL": postgres_url}
    first = await asyncio.to_thread(serve, tmp_path, policy, env=env)
    kill = asyncio.Event()

    async def killer() -> None:
        await kill.wait()
        first.process.send_signal(signal.SIGKILL)

    killing = asyncio.create_task(killer())
    answered = await _answered_ids(first.base_url, 1000, 300, kill)
    await killing
    assert first.process.wait(timeout=10) == -signal.SIGKILL
    assert len(answered) >= 300

    # The restarted gateway (same data directory, so the same spool) replays what it finds.
    second = await asyncio.to_thread(serve, tmp_path, policy, env=env)
    try:
        connection = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
        try:
            deadline = time.monotonic() + 60
            while True:
                rows = await connection.fetch(
                    "SELECT client_request_id FROM usage_ledger"
                    " WHERE client_request_id LIKE 'kill-%'"
                )
                found = {r["client_request_id"] for r in rows}
                if answered <= found or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            duplicates = await connection.fetchval(
                "SELECT COUNT(*) - COUNT(DISTINCT client_request_id) FROM usage_ledger"
                " WHERE client_request_id LIKE 'kill-%'"
            )
        finally:
            await connection.close()
    finally:
        second.stop(signal.SIGKILL)
    assert answered - found == set(), f"{len(answered - found)} answered requests have no row"
    assert duplicates == 0
