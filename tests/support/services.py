"""Real Redis and Postgres for tests: the configured one, the local one, or a throwaway one.

Integration tests never skip for want of a service: if none can be found or started they fail,
saying what to install. The throwaway servers are also what fault-injection tests use, since they
can be killed, stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg  # type: ignore[import-untyped]
import redis
from sqlalchemy.engine import make_url

T = TypeVar("T")

REDIS_ENV = "TOLLGATE_TEST_REDIS_URL"
POSTGRES_ENV = "TOLLGATE_TEST_DATABASE_URL"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

REDIS_HINT = (
    f"Install Redis (apt-get install redis-server), run one on 127.0.0.1:6379, or set {REDIS_ENV}."
)
POSTGRES_HINT = (
    "Install PostgreSQL (apt-get install postgresql), run one on 127.0.0.1:5432 with user "
    f"postgres, or set {POSTGRES_ENV}=postgresql+asyncpg://user:password@host:port/database."
)


class ServiceNotFound(RuntimeError):
    """No server of the kind needed could be found or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh loop in a worker thread.

    Session fixtures are synchronous; this works whether or not an event loop is running in the
    calling thread.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _wait_until(
    ready: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise ServiceNotFound(f"{what} did not become ready in {timeout_s:.0f} s\n{tail}")
        time.sleep(0.05)


# --- Redis ------------------------------------------------------------------------------------


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis at ``url`` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN + DEL, never KEYS). Returns how many."""
    client = redis.Redis.from_url(url)
    try:
        pattern = _glob_escape(prefix) + "*"
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class ThrowawayRedis:
    """A ``redis-server`` of our own on ``port``, with no persistence. Use as a context manager.

    ``kill()`` (SIGKILL) and ``stop()`` (SIGTERM) take it away; ``start()`` brings it back on the
    same port, empty.
    """

    def __init__(self, port: int | None = None, *, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise ServiceNotFound(f"redis-server is not installed. {REDIS_HINT}")
        self.binary = found
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkdtemp(prefix="tollgate-redis-")) / "redis.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server (if it is not running) and wait until it answers PING."""
        if self.running:
            return
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self._log),
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._process = process

        def ready() -> bool:
            if process.poll() is not None:
                raise ServiceNotFound(
                    f"redis-server exited with {process.returncode}: "
                    + self._log.read_text(errors="replace")[-2000:]
                )
            return redis_answers(self.url, timeout_s=0.2)

        _wait_until(ready, timeout_s, f"redis-server on port {self.port}", self._log)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM) and wait for the process to exit."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill abruptly (SIGKILL), as a crash or an OOM kill would."""
        self._end(signal.SIGKILL)

    def close(self) -> None:
        """Stop the server if running and remove its files."""
        self._end(signal.SIGKILL)
        shutil.rmtree(self._log.parent, ignore_errors=True)

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_throwaway_redis(port: int | None = None) -> ThrowawayRedis:
    """A started :class:`ThrowawayRedis`; call ``close()`` (or use ``with``) when done."""
    server = ThrowawayRedis(port)
    server.start()
    return server


def find_redis(stack: contextlib.ExitStack) -> str:
    """A Redis URL: ``$TOLLGATE_TEST_REDIS_URL``, the local 6379, or a throwaway server.

    A throwaway server is stopped when ``stack`` closes.
    """
    configured = os.environ.get(REDIS_ENV)
    if configured:
        if not redis_answers(configured, timeout_s=3.0):
            raise ServiceNotFound(f"{REDIS_ENV}={configured} does not answer PING.")
        return configured
    if redis_answers(LOCAL_REDIS_URL):
        return LOCAL_REDIS_URL
    server = stack.enter_context(ThrowawayRedis())
    return server.url


# --- Postgres ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """Where a Postgres server is and how to log in to it as a user allowed to create databases."""

    host: str
    port: int
    user: str
    password: str | None = None
    admin_database: str = "postgres"

    @classmethod
    def from_url(cls, url: str) -> PostgresServer:
        parsed = make_url(url)
        return cls(
            host=parsed.host or "127.0.0.1",
            port=parsed.port or 5432,
            user=parsed.username or "postgres",
            password=parsed.password,
            admin_database=parsed.database or "postgres",
        )

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql+asyncpg://{auth}@{self.host}:{self.port}/{database}"

    async def _connect(self, timeout_s: float) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.admin_database,
            timeout=timeout_s,
        )

    def accepts_connections(self, timeout_s: float = 2.0) -> bool:
        """Whether we can log in to the admin database."""

        async def probe() -> bool:
            try:
                conn = await self._connect(timeout_s)
            except (OSError, TimeoutError, asyncpg.PostgresError):
                return False
            await conn.close()
            return True

        return run_async(probe())

    def execute(self, *statements: str) -> None:
        """Run admin statements (outside a transaction, as CREATE DATABASE requires)."""

        async def run() -> None:
            conn = await self._connect(10.0)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        run_async(run())

    def create_database(self, prefix: str = "tollgate_test_") -> str:
        """Create an empty database with a unique name; return its name."""
        name = prefix + uuid.uuid4().hex[:8]
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting anyone still connected (a leaked pool must not block)."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def temporary_database(self) -> Iterator[str]:
        """A fresh database's SQLAlchemy URL, dropped on exit."""
        name = self.create_database()
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb, else wherever PATH has it."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if candidates:
        newest = max(candidates, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class ThrowawayPostgres:
    """A Postgres cluster of our own in a temporary directory, on ``port``, trust auth.

    Postgres refuses to run as root, so when we are root the cluster belongs to (and runs as)
    the ``postgres`` user. ``stop()`` shuts down cleanly, ``kill()`` crashes it (immediate mode:
    recovery runs on the next start), ``start()`` brings it back on the same port with its data.
    Durability is off (fsync=off): a test server only has to survive process crashes.
    """

    def __init__(self, port: int | None = None, *, bin_dir: Path | None = None) -> None:
        found = bin_dir or postgres_bin_dir()
        if found is None:
            raise ServiceNotFound(f"initdb/pg_ctl were not found. {POSTGRES_HINT}")
        self.bin_dir = found
        self.port = port or free_port()
        self.server = PostgresServer(host="127.0.0.1", port=self.port, user="postgres")
        self._run_as = self._service_user()
        # Under /tmp rather than pytest's tmp_path: the postgres user must be able to reach it,
        # and pytest's base directory is private to the current user.
        self.base = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        if self._run_as is not None:
            os.chown(self.base, self._run_as.pw_uid, self._run_as.pw_gid)
        self._initdb()

    @staticmethod
    def _service_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceNotFound(
                f"running as root needs a 'postgres' user to own the cluster. {POSTGRES_HINT}"
            ) from None

    def _tool(self, *args: str, timeout_s: float = 60.0) -> None:
        out = self.base / "tool.out"
        with out.open("ab") as sink:
            if self._run_as is not None:
                os.chown(out, self._run_as.pw_uid, self._run_as.pw_gid)
            result = subprocess.run(
                [str(self.bin_dir / args[0]), *args[1:]],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                cwd=self.base,
                timeout=timeout_s,
                user=self._run_as.pw_uid if self._run_as else None,
                group=self._run_as.pw_gid if self._run_as else None,
                check=False,
            )
        if result.returncode != 0:
            tail = out.read_text(errors="replace")[-2000:]
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ServiceNotFound(f"{args[0]} {args[1:]} failed:\n{tail}\n{log}")

    def _initdb(self) -> None:
        self._tool(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``postgres`` database."""
        return self.server.url("postgres")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server (if not running) and wait until it accepts connections."""
        if self.running:
            return
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._tool(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(int(timeout_s)), "start",
        )  # fmt: skip
        _wait_until(self.server.accepts_connections, timeout_s, "postgres", self.log)

    def stop(self) -> None:
        """Shut down cleanly (fast mode: disconnects clients, checkpoints)."""
        self._pg_stop("fast")

    def kill(self) -> None:
        """Crash it: every process exits at once, without a checkpoint."""
        self._pg_stop("immediate")

    def _pg_stop(self, mode: str) -> None:
        if self.running:
            self._tool("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def close(self) -> None:
        """Stop the server if running and delete the cluster."""
        try:
            self._pg_stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_throwaway_postgres(port: int | None = None) -> ThrowawayPostgres:
    """A started :class:`ThrowawayPostgres`; call ``close()`` (or use ``with``) when done."""
    server = ThrowawayPostgres(port)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


def find_postgres(stack: contextlib.ExitStack) -> PostgresServer:
    """A Postgres server: ``$TOLLGATE_TEST_DATABASE_URL``'s, the local 5432, or a throwaway one.

    Tests create their own databases on it, so the configured user needs CREATEDB. A throwaway
    server is deleted when ``stack`` closes.
    """
    configured = os.environ.get(POSTGRES_ENV)
    if configured:
        server = PostgresServer.from_url(configured)
        if not server.accepts_connections(timeout_s=5.0):
            raise ServiceNotFound(f"{POSTGRES_ENV} does not accept connections.")
        return server
    local = PostgresServer.from_url(LOCAL_POSTGRES_URL)
    if local.accepts_connections():
        return local
    throwaway = ThrowawayPostgres()
    stack.callback(throwaway.close)
    throwaway.start()
    return throwaway.server
