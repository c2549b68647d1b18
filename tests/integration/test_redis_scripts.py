"""The lean script client (``gateway/redis_scripts``) against real Redis servers.

The shared server for what only reads and writes this test's own keys; throwaway servers for
whatever flushes, locks, stops or restarts one; a raw socket server for a Redis that accepts
and never answers. Each test runs on asyncio's own loop and on uvloop (what the gateway serves
on): their transports differ in the places a protocol depends on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import redis
import uvloop
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_scripts import CommandTimeout, ScriptClient
from gateway.state import StateStore
from tests.support.bad_upstream import closed_port
from tests.support.services import ThrowawayRedis

ECHO = "return {KEYS[1], ARGV[1]}"
BOTH_LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


def run(loop: str, scenario: Coroutine[Any, Any, None], timeout_s: float = 20.0) -> None:
    runner: Callable[[Coroutine[Any, Any, None]], None] = (
        uvloop.run if loop == "uvloop" else asyncio.run
    )
    runner(asyncio.wait_for(scenario, timeout_s))


def client_for(url: str, timeout_s: float = 2.0) -> ScriptClient:
    found = ScriptClient.from_url(url, socket_timeout_s=timeout_s)
    assert found is not None
    return found


def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)


@pytest.fixture
def server() -> Iterator[ThrowawayRedis]:
    with ThrowawayRedis() as started:
        yield started


def command_calls(url: str, name: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats").get(f"cmdstat_{name}", {})
    return int(stats.get("calls", 0))


@BOTH_LOOPS
def test_concurrent_calls_share_writes_and_get_their_own_replies(
    loop: str, redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> None:
        client = client_for(redis_url)
        echo = client.register_script(ECHO)
        try:
            await echo([f"{redis_prefix}k"], ["warm"])  # connected, script loaded
            connection = client.connection
            assert connection is not None
            commands, writes = connection.commands, connection.writes
            replies = await asyncio.gather(
                *(echo([f"{redis_prefix}k{i}"], [i]) for i in range(100))
            )
            assert replies == [
                [f"{redis_prefix}k{i}".encode(), str(i).encode()] for i in range(100)
            ]
            assert connection.commands - commands == 100
            # The first is written at once, the other 99 together at the end of the iteration.
            assert connection.writes - writes <= 3
            assert client.connects == 1
        finally:
            await client.aclose()

    run(loop, scenario())


@BOTH_LOOPS
def test_an_error_reply_raises_and_the_connection_carries_on(loop: str, redis_url: str) -> None:
    async def scenario() -> None:
        client = client_for(redis_url)
        failing = client.register_script("return redis.error_reply('no budget here')")
        echo = client.register_script(ECHO)
        try:
            results = await asyncio.gather(
                echo(["a"], [1]), failing([], []), echo(["b"], [2]), return_exceptions=True
            )
            assert results[0] == [b"a", b"1"] and results[2] == [b"b", b"2"]
            assert type(results[1]) is ResponseError and str(results[1]) == "no budget here"
            assert client.connects == 1
        finally:
            await client.aclose()

    run(loop, scenario())


@BOTH_LOOPS
def test_scripts_are_loaded_again_after_a_script_flush(loop: str, server: ThrowawayRedis) -> None:
    async def scenario() -> None:
        client = client_for(server.url)
        echo = client.register_script(ECHO)
        try:
            assert await echo(["k"], ["one"]) == [b"k", b"one"]  # NOSCRIPT, then EVAL
            assert await echo(["k"], ["two"]) == [b"k", b"two"]  # by SHA
            redis.Redis.from_url(server.url).script_flush()
            # Several callers find it missing at once: each loads it, none fails.
            replies = await asyncio.gather(*(echo(["k"], [i]) for i in range(5)))
            assert replies == [[b"k", str(i).encode()] for i in range(5)]
            assert await echo(["k"], ["three"]) == [b"k", b"three"]
        finally:
            await client.aclose()

    run(loop, scenario())
    assert command_calls(server.url, "eval") == 1 + 5
    assert command_calls(server.url, "evalsha") == 1 + 1 + 5 + 1


@BOTH_LOOPS
def test_auth_and_select_on_connect(loop: str, server: ThrowawayRedis) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser("app", enabled=True, passwords=["+apppw"], keys=["*"], commands=["+@all"])
    admin.config_set("requirepass", "s3cret")
    secured = redis.Redis(port=server.port, password="s3cret", db=5)
    port = server.port

    async def scenario() -> None:
        setter = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"
        for url, value in [
            (f"redis://:s3cret@127.0.0.1:{port}/5", "by-password"),
            (f"redis://app:apppw@127.0.0.1:{port}/5", "by-user"),
        ]:
            client = client_for(url)
            try:
                assert await client.register_script(setter)([value], [value]) == value.encode()
            finally:
                await client.aclose()
        for url in [f"redis://:wrong@127.0.0.1:{port}/5", f"redis://127.0.0.1:{port}/5"]:
            client = client_for(url)
            try:
                # WRONGPASS on connect, NOAUTH on the call: both redis-py's AuthenticationError.
                with pytest.raises(AuthenticationError):
                    await client.register_script(setter)(["k"], ["v"])
            finally:
                await client.aclose()

    run(loop, scenario())
    assert secured.get("by-password") == b"by-password" and secured.get("by-user") == b"by-user"
    assert redis.Redis(port=port, password="s3cret", db=0).dbsize() == 0


@BOTH_LOOPS
def test_a_silent_server_times_out_every_waiting_call_then_a_new_connection_is_tried(
    loop: str,
) -> None:
    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def accept_and_ignore(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            accepted.append(writer)
            while await reader.read(65536):
                pass

        silent = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        client = client_for(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
        echo = client.register_script(ECHO)
        try:
            started = time.perf_counter()
            results = await asyncio.gather(
                *(echo(["k"], [i]) for i in range(10)), return_exceptions=True
            )
            elapsed = time.perf_counter() - started
            assert all(isinstance(r, CommandTimeout) for r in results), results
            # Both kinds of TimeoutError, so either ``except`` catches it.
            assert isinstance(results[0], TimeoutError) and isinstance(
                results[0], RedisTimeoutError
            )
            assert 0.25 < elapsed < 1.5
            assert len(accepted) == 1
            with pytest.raises(TimeoutError):
                await echo(["k"], ["again"])
            assert len(accepted) == 2  # the timed-out connection was closed, a new one opened
        finally:
            await client.aclose()
            silent.close()
            for writer in accepted:
                writer.close()
            await silent.wait_closed()

    run(loop, scenario())


@BOTH_LOOPS
def test_a_stopped_redis_times_out_and_the_next_call_after_it_resumes_succeeds(
    loop: str, server: ThrowawayRedis
) -> None:
    pid = server._process.pid if server._process else None
    assert pid is not None

    async def scenario() -> None:
        client = client_for(server.url, timeout_s=0.3)
        echo = client.register_script(ECHO)
        try:
            assert await echo(["k"], ["before"]) == [b"k", b"before"]
            os.kill(pid, signal.SIGSTOP)
            try:
                results = await asyncio.gather(
                    *(echo(["k"], [i]) for i in range(20)), return_exceptions=True
                )
                assert all(isinstance(r, CommandTimeout) for r in results), results
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await echo(["k"], ["after"]) == [b"k", b"after"]
            assert client.connects == 2
        finally:
            await client.aclose()

    run(loop, scenario())


@BOTH_LOOPS
def test_a_reply_that_arrived_while_the_loop_was_blocked_is_not_a_timeout(
    loop: str, redis_url: str
) -> None:
    async def scenario() -> None:
        client = client_for(redis_url, timeout_s=0.2)
        echo = client.register_script(ECHO)
        try:
            await echo(["k"], ["warm"])
            call = asyncio.ensure_future(echo(["k"], ["late"]))
            await asyncio.sleep(0)  # sent
            # The event loop is stuck past the deadline (CPU-bound work on it) while the
            # reply waits in the socket: it is read before the deadline is judged.
            block_the_loop(0.5)
            assert await call == [b"k", b"late"]
            assert client.connects == 1
        finally:
            await client.aclose()

    run(loop, scenario())


@BOTH_LOOPS
def test_a_cancelled_caller_leaves_the_replies_aligned(loop: str, redis_url: str) -> None:
    async def scenario() -> None:
        client = client_for(redis_url)
        echo = client.register_script(ECHO)
        try:
            await echo(["k"], ["warm"])
            tasks = [asyncio.ensure_future(echo(["k"], [i])) for i in range(6)]
            await asyncio.sleep(0)  # every command is sent (or queued) before the cancels
            for task in tasks[1::2]:
                task.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert [d for d in done[0::2]] == [[b"k", str(i).encode()] for i in (0, 2, 4)]
            assert all(isinstance(d, asyncio.CancelledError) for d in done[1::2])
            # The cancelled callers' replies were read and dropped, not handed to later calls.
            assert await echo(["k"], ["next"]) == [b"k", b"next"]
            assert await asyncio.gather(*(echo(["k"], [i]) for i in range(3))) == [
                [b"k", str(i).encode()] for i in range(3)
            ]
            connection = client.connection
            assert connection is not None and connection.in_flight == 0
            assert client.connects == 1
        finally:
            await client.aclose()

    run(loop, scenario())


@BOTH_LOOPS
def test_a_restarted_redis_costs_the_idle_connection_no_failed_call(
    loop: str, server: ThrowawayRedis
) -> None:
    async def scenario() -> None:
        client = client_for(server.url)
        echo = client.register_script(ECHO)
        try:
            assert await echo(["k"], ["before"]) == [b"k", b"before"]
            # Blocking calls: the loop does not run, so the client has not seen the close yet
            # and writes on the dead connection. That call is sent again on a new one (and
            # the script loaded again, the new server being empty).
            server.kill()
            server.start()
            assert await echo(["k"], ["after"]) == [b"k", b"after"]
            assert client.connects == 2
        finally:
            await client.aclose()

    run(loop, scenario())


@BOTH_LOOPS
def test_a_refused_connection_raises_at_once(loop: str) -> None:
    async def scenario() -> None:
        client = client_for(f"redis://127.0.0.1:{closed_port()}/0")
        echo = client.register_script(ECHO)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(echo(["k"], [i]) for i in range(5)), return_exceptions=True
        )
        assert time.perf_counter() - started < 0.5
        # One connection attempt for all five, and redis-py's error type.
        assert all(type(r) is RedisConnectionError for r in results), results
        await client.aclose()

    run(loop, scenario())


@BOTH_LOOPS
def test_a_closed_client_fails_its_waiting_calls(loop: str, server: ThrowawayRedis) -> None:
    pid = server._process.pid if server._process else None
    assert pid is not None

    async def scenario() -> None:
        client = client_for(server.url)
        echo = client.register_script(ECHO)
        await echo(["k"], ["warm"])
        os.kill(pid, signal.SIGSTOP)  # so that the calls below are still waiting
        try:
            waiting = asyncio.gather(*(echo(["k"], [i]) for i in range(3)), return_exceptions=True)
            await asyncio.sleep(0.05)
            await client.aclose()
            results = await waiting
            assert all(isinstance(r, RedisConnectionError) for r in results), results
            with pytest.raises(RedisConnectionError):
                await echo(["k"], ["after close"])
        finally:
            os.kill(pid, signal.SIGCONT)

    run(loop, scenario())


@BOTH_LOOPS
def test_closing_while_connecting_fails_the_callers_waiting_for_the_connection(
    loop: str,
) -> None:
    async def scenario() -> None:
        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the client goes away
            writer.close()

        silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        # A password: the connection waits for AUTH's reply, which never comes.
        client = client_for(f"redis://:pw@127.0.0.1:{port}/0")
        echo = client.register_script(ECHO)
        try:
            waiting = asyncio.gather(*(echo(["k"], [i]) for i in range(3)), return_exceptions=True)
            await asyncio.sleep(0.05)
            await client.aclose()
            results = await waiting
            assert all(type(r) is RedisConnectionError for r in results), results
        finally:
            silent.close()
            await silent.wait_closed()

    run(loop, scenario())


def test_the_state_store_builds_the_lean_client_only_for_urls_it_handles() -> None:
    plain = StateStore("redis://127.0.0.1:6379/0", "x:")
    assert plain.scripts is not None and plain.scripts.address.db == 0
    assert StateStore("unix:///run/redis.sock", "x:").scripts is None
    assert StateStore("redis://127.0.0.1:6379/0?health_check_interval=5", "x:").scripts is None
    assert StateStore("redis://127.0.0.1:6379/0", "x:", lean_scripts=False).scripts is None
    assert StateStore(None, "x:").scripts is None
