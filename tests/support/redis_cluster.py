"""A throwaway Redis Cluster: masters started from the ``redis-server`` binary on free loopback
ports, joined with ``redis-cli --cluster create``, killed and deleted on exit.

Each node gets its cluster bus port chosen explicitly (``--cluster-port``), since the default
(port + 10000) may be taken or past 65535 for an ephemeral port.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from tests.support.services import REDIS_HINT, ServiceNotFound, free_port, redis_answers


class ThrowawayRedisCluster:
    """``masters`` Redis Cluster masters (no replicas) on 127.0.0.1. Use as a context manager."""

    def __init__(self, masters: int = 3) -> None:
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if server is None or cli is None:
            raise ServiceNotFound(f"redis-server and redis-cli are needed. {REDIS_HINT}")
        self.server_binary, self.cli_binary = server, cli
        self.ports = [free_port() for _ in range(masters)]
        self.base = Path(tempfile.mkdtemp(prefix="tollgate-redis-cluster-"))
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every master."""
        return [("127.0.0.1", port) for port in self.ports]

    @property
    def url(self) -> str:
        """A URL of one node (a cluster client discovers the others from it)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start every node, create the cluster and wait until all 16384 slots are served."""
        for port in self.ports:
            self._start_node(port)
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            self._wait(lambda p=port: redis_answers(f"redis://127.0.0.1:{p}/0", 0.2), deadline)
        created = subprocess.run(
            [
                self.cli_binary, "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise ServiceNotFound(
                "redis-cli --cluster create failed: "
                + (created.stdout + created.stderr).decode(errors="replace")[-2000:]
            )
        for port in self.ports:
            self._wait(lambda p=port: self._cluster_ok(p), deadline)

    def _start_node(self, port: int) -> None:
        directory = self.base / str(port)
        directory.mkdir()
        command = [
            self.server_binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-port", str(free_port()),
            "--cluster-config-file", str(directory / "nodes.conf"),
            "--cluster-node-timeout", "5000",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        self._processes.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        )

    def _wait(self, ready: Callable[[], bool], deadline: float) -> None:
        while not ready():
            for process in self._processes:
                if process.poll() is not None:
                    raise ServiceNotFound(f"a cluster node exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise ServiceNotFound(f"the Redis Cluster did not come up; logs in {self.base}")
            time.sleep(0.05)

    @staticmethod
    def _cluster_ok(port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=1.0)
        try:
            info = client.cluster("info")
        except redis.RedisError:
            return False
        finally:
            client.close()
        return (
            isinstance(info, dict)
            and info.get("cluster_state") == "ok"
            and int(info.get("cluster_slots_ok", 0)) == 16384
        )

    def close(self) -> None:
        """Kill every node and delete its files."""
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
        self._processes.clear()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
