"""The README's "Auditing spend with SQL" queries run against a migrated Postgres."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from gateway.db.migrate import upgrade

README = Path(__file__).resolve().parents[2] / "README.md"


def _queries() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Auditing spend with SQL") :]
    block = re.search(r"```sql\n(.*?)```", section, re.S)
    assert block is not None
    statements = [s.strip() for s in block.group(1).split(";")]
    return [
        s for s in statements if s and not all(line.startswith("--") for line in s.splitlines())
    ]


async def test_the_readme_queries_run(fresh_postgres_url: str) -> None:
    await upgrade(fresh_postgres_url)
    queries = _queries()
    assert len(queries) == 5
    connection = await asyncpg.connect(fresh_postgres_url.replace("+asyncpg", ""))
    try:
        await connection.execute(
            "INSERT INTO usage_ledger (request_id, ts, team, key_id, route, deployment, status,"
            " http_status, prompt_tokens, completion_tokens, cached_tokens, cost_usd,"
            " cost_saved_usd, ttft_ms, attempts, stream, slo_met) VALUES ('r1',"
            " '2026-11-02T10:00:00+00', 'search', 'key_1', 'chat', 'sim-chat', 'upstream_error',"
            " 502, 10, 0, 0, 0, 0, 12.5, 1, false, false)"
        )
        for query in queries:
            await connection.fetch(query)
        failures = await connection.fetch(queries[4])
        assert [(r["status"], r["requests"]) for r in failures] == [("upstream_error", 1)]
    finally:
        await connection.close()
