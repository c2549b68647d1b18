"""A lean asyncio Redis client for one job: running Lua scripts (EVALSHA) on a standalone Redis.

The budget limiter makes two script calls per request; through redis-py each costs its
general machinery (connection pool, command packing, parser, retry wrapper) on the hot path.
This client does only that job: one connection, RESP2, commands from concurrent callers
pipelined into one write per event-loop iteration, replies matched in order.

* :mod:`~gateway.redis_scripts.resp`: encoding (as redis-py's) and the reply parser;
* :mod:`~gateway.redis_scripts.connection`: the pipelined connection, deadlines, FIFO;
* :mod:`~gateway.redis_scripts.client`: URL, (re)connecting, NOSCRIPT, the retry once.

Anything else (Cluster, Sentinel, unix sockets, the prompt cache's commands) stays on redis-py;
:meth:`ScriptClient.from_url` returns None for a URL it does not handle.
"""

from __future__ import annotations

from gateway.redis_scripts.client import Address, Script, ScriptClient
from gateway.redis_scripts.connection import CommandTimeout, ConnectionClosed, ScriptConnection
from gateway.redis_scripts.resp import ReplyParser

__all__ = [
    "Address",
    "CommandTimeout",
    "ConnectionClosed",
    "ReplyParser",
    "Script",
    "ScriptClient",
    "ScriptConnection",
]
