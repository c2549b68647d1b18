"""A real ``tollgate serve`` process, driven by the openai SDK exactly as the README shows."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.db.migrate import current_revision, head_revision
from tests.e2e.conftest import ADMIN_KEY
from tests.support.bad_upstream import bad_upstream
from tests.support.gateway_process import REPO, Served, free_port, serve


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Served]:
    served = serve(tmp_path, REPO / "policies")
    yield served
    served.stop(signal.SIGKILL)


def test_readme_snippet_against_the_embedded_default(demo: Served) -> None:
    # The banner comes first, on stdout, before the server accepts requests.
    assert demo.lines[0] == f"Tollgate serving on {demo.base_url}"
    client = openai.OpenAI(base_url=demo.base_url, api_key=demo.demo_key(), max_retries=0)
    assert {m.id for m in client.models.list().data} == {"chat", "embed"}
    chat = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    embeddings = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(embeddings.data) == 2
    completion = client.completions.create(model="chat", prompt="Say hi")
    assert completion.choices[0].text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=demo.base_url, api_key="tg-wrong-key", max_retries=0).models.list()


def test_access_log_is_json_without_secrets(demo: Served) -> None:
    key = demo.demo_key()
    client = openai.OpenAI(base_url=demo.base_url, api_key=key, max_retries=0)
    client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "a secret prompt"}],
        extra_headers={"x-request-id": "trace-log-1"},
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("trace-log-1" in e for e in demo.errors):
        time.sleep(0.05)
    import json

    line = next(json.loads(e) for e in demo.errors if "trace-log-1" in e)
    assert line["team"] == "demo" and line["route"] == "chat" and line["http_status"] == 200
    assert line["deployment"] and line["prompt_tokens"] > 0 and line["total_ms"] > 0
    # The gateway's own share of the time to first byte: positive, and part of the TTFT.
    assert 0 < line["overhead_ms"] <= line["ttft_ms"] <= line["total_ms"]
    everything = "\n".join(demo.errors + demo.lines[1:])
    assert "a secret prompt" not in everything
    assert key not in "\n".join(demo.errors)


def _health_on(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: tollgate\r\n\r\n")
    return sock.recv(65536)


def test_an_idle_connection_outlives_the_clients_own_keep_alive(demo: Served) -> None:
    # httpx (so the openai SDK) keeps an idle connection for 5 s, as long as uvicorn's default:
    # a request sent at that moment could meet the gateway closing the connection. The gateway
    # keeps it longer, so the client closes first.
    with socket.create_connection(("127.0.0.1", demo.port), timeout=5) as sock:
        assert _health_on(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)
        assert _health_on(sock).startswith(b"HTTP/1.1 200")


def test_the_keep_alive_is_a_setting(tmp_path: Path) -> None:
    served = serve(tmp_path, REPO / "policies", env={"TOLLGATE_KEEP_ALIVE_S": "0.5"})
    try:
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            assert _health_on(sock).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)
            assert sock.recv(1) == b""  # closed by the gateway
    finally:
        served.stop(signal.SIGKILL)


def test_demo_key_is_reused_after_restart(tmp_path: Path) -> None:
    first = serve(tmp_path, REPO / "policies")
    key = first.demo_key()
    # uvicorn re-raises SIGTERM after its graceful shutdown, as a process killed by it would end.
    assert first.stop() == -signal.SIGTERM
    second = serve(tmp_path, REPO / "policies")
    try:
        assert second.demo_key() == key
    finally:
        second.stop(signal.SIGKILL)


def test_sighup_and_admin_reload(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    original = (REPO / "policies" / "demo.yaml").read_text()
    (policy_dir / "demo.yaml").write_text(original)
    served = serve(tmp_path, policy_dir)
    try:
        client = openai.OpenAI(base_url=served.base_url, api_key=served.demo_key(), max_retries=0)
        # A new route appears after SIGHUP.
        (policy_dir / "demo.yaml").write_text(
            original.replace("routes:\n", "routes:\n  chat2:\n    candidates: [sim-chat]\n", 1)
        )
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "chat2" not in {m.id for m in client.models.list().data}:
            assert time.monotonic() < deadline, "SIGHUP did not reload the policy"
            time.sleep(0.1)
        # An invalid policy is refused by the admin endpoint; the old one keeps serving.
        (policy_dir / "demo.yaml").write_text(
            original.replace("candidates: [", "candidates: [nope, ", 1)
        )
        response = httpx.post(
            f"http://127.0.0.1:{served.port}/admin/policy/reload",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert response.status_code == 400
        assert 'unknown model "nope"' in response.json()["error"]["message"]
        assert "chat2" in {m.id for m in client.models.list().data}
        assert client.chat.completions.create(
            model="chat2", messages=[{"role": "user", "content": "hi"}]
        ).choices
    finally:
        served.stop(signal.SIGKILL)


def test_sigterm_lets_a_stream_finish(tmp_path: Path) -> None:
    served = serve(tmp_path, REPO / "policies")
    client = openai.OpenAI(base_url=served.base_url, api_key=served.demo_key(), max_retries=0)
    # ~64 tokens at the demo's pace: the stream is in flight when SIGTERM arrives.
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "long"}], stream=True, max_tokens=64
    )
    first = next(iter(stream))
    served.process.send_signal(signal.SIGTERM)
    rest = list(stream)
    assert first.choices and rest
    assert rest[-1].choices[0].finish_reason == "length"
    assert served.process.wait(timeout=30) == -signal.SIGTERM
    assert any("Finished server process" in line for line in served.errors)


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_closes_the_upstream(tmp_path: Path, stream: bool) -> None:
    async with bad_upstream() as upstream:
        policy_dir = tmp_path / "policies"
        policy_dir.mkdir()
        fault = "endless-stream" if stream else "slow"
        (policy_dir / "p.yaml").write_text(
            f"""
providers:
  endless: {{type: openai, base_urls: ["{upstream.url(fault)}"]}}
models:
  forever: {{provider: endless, model: forever, pricing: free}}
routes:
  chat: {{candidates: [forever]}}
teams:
  demo: {{routes: ["*"]}}
"""
        )
        served = await asyncio.to_thread(serve, tmp_path, policy_dir)
        try:
            client = openai.AsyncOpenAI(
                base_url=served.base_url, api_key=served.demo_key(), max_retries=0, timeout=0.5
            )
            if stream:
                chunks = await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "go"}], stream=True
                )
                async for _ in chunks:
                    break
                await chunks.close()
            else:
                # The client gives up waiting (its timeout closes the connection).
                with pytest.raises(openai.APITimeoutError):
                    await client.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": "go"}]
                    )
            await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)
        finally:
            served.stop(signal.SIGKILL)


def test_workers_need_redis(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TOLLGATE_REDIS_URL"},
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert "needs TOLLGATE_REDIS_URL" in result.stderr
    assert result.stdout == ""


def test_two_workers_with_redis(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    served = serve(
        tmp_path,
        REPO / "policies",
        "--workers",
        "2",
        env={"TOLLGATE_REDIS_URL": redis_url, "TOLLGATE_REDIS_PREFIX": redis_prefix},
    )
    try:
        client = openai.OpenAI(base_url=served.base_url, api_key=served.demo_key(), max_retries=0)
        for _ in range(20):
            assert client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            ).choices
        ready = httpx.get(f"http://127.0.0.1:{served.port}/readyz").json()
        assert ready["checks"]["state"]["backend"] == "redis"
    finally:
        served.stop(signal.SIGTERM)


def test_a_fresh_postgres_is_migrated_before_serving(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    # The migrations run in a child process (Alembic stays out of the server), yet before the
    # demo key is written and before the first request: both need the tables.
    served = serve(tmp_path, REPO / "policies", env={"TOLLGATE_DATABASE_URL": fresh_postgres_url})
    try:
        client = openai.OpenAI(base_url=served.base_url, api_key=served.demo_key(), max_retries=0)
        assert client.models.list().data
        assert asyncio.run(current_revision(fresh_postgres_url)) == head_revision()
        assert any('"logger":"alembic.runtime.migration"' in line for line in served.errors)
        assert any("upgraded to head" in line for line in served.errors)
    finally:
        served.stop(signal.SIGKILL)


def test_serve_stops_when_the_migrations_fail(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env |= {
        "TOLLGATE_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere",
        "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1
    assert '"msg":"migration failed"' in result.stderr  # the child's log line says why
    assert "failed in a child process" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # never announced itself as serving
