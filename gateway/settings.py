"""Process settings, read from ``TOLLGATE_*`` environment variables.

Nothing is instantiated at import time: ``Settings()`` is built by the CLI (or a test) and handed
down explicitly, so two apps with different settings can live in one process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a gateway process needs to know that is not policy."""

    model_config = SettingsConfigDict(env_prefix="TOLLGATE_", frozen=True, extra="ignore")

    policy: Path = Path("policies")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1

    # Where the embedded default keeps its SQLite file and the demo key.
    data_dir: Path = Path(".tollgate")
    # postgresql+asyncpg://... switches the embedded SQLite file to Postgres.
    database_url: str | None = None
    # redis://... switches the in-process state store to Redis.
    redis_url: str | None = None
    redis_prefix: str = "tollgate:"

    admin_key: str | None = None
    demo_team: str = "demo"
    max_body_bytes: int = 32 * 1024 * 1024
    shutdown_grace_s: float = 30.0
    # How long an idle client connection stays open: longer than clients and load balancers
    # keep theirs idle, so that they, not the gateway, close it (see gateway/cli/serve.py).
    keep_alive_s: float = 75.0
    # How long a key lookup is trusted before the database is asked again: the bound on how
    # late a revocation takes effect on a replica.
    key_cache_ttl_s: float = 5.0
    migrate: bool = True
    replica: str = ""
    log_level: str = "info"
    access_log: bool = True
    # The usage ledger's local spool (default: data_dir/ledger). It must survive a restart of
    # the process (a persistent volume per replica): unsent rows are replayed from it.
    ledger_dir: Path | None = None
    # Prompts whose request body is larger than this are not counted before the upstream call:
    # the body's length in bytes (a bound no tokenizer can exceed) is reserved instead, and the
    # upstream's usage settles it. Counting 100k tokens costs a core for ~30 ms that the other
    # requests need. 0 counts every prompt exactly.
    count_exactly_below_bytes: int = 64 * 1024
    # The in-process prompt cache's size (the embedded default; with Redis the cache is there).
    cache_memory_bytes: int = 64 * 1024 * 1024
    # Opt-in: after a request arrives or a response leaves, the event loop polls for this long
    # past its last work before it sleeps (gateway/busy_poll.py), so a reply or a client's next
    # request finds it awake. It pays for back-to-back clients and costs CPU (and, on this
    # project's 2-core machine shared with Redis and the upstream, latency) when requests are
    # sparse: off (0) unless set.
    busy_poll_us: int = Field(default=0, ge=0, le=100_000)
    # Every this many seconds the C heap's free pages go back to the system, so that a burst of
    # big prompts or an overload does not leave the process at its high-water mark, and the
    # tokenizers' tables load outside the heap (gateway/heap_trim.py). 0 turns both off.
    heap_trim_s: float = Field(default=10.0, ge=0)

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tollgate.db').resolve()}"

    def resolved_ledger_dir(self) -> Path:
        return self.ledger_dir or self.data_dir / "ledger"

    def replica_name(self) -> str:
        """A name for this process in logs and the ledger."""
        return self.replica or f"{socket.gethostname()}-{os.getpid()}"
