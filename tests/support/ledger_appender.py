"""A gateway stand-in for the ledger's crash tests: appends events, then gets killed.

    python -m tests.support.ledger_appender SPOOL_DIR DATABASE_URL --count N --prefix P
        [--interval-ms MS] [--flush-interval-s S] [--stale-offset]

Runs a real :class:`~gateway.ledger.writer.LedgerWriter` (inserting into the database as it
goes) and appends ``N`` events with request ids ``P-0`` .. ``P-(N-1)``. After each ``append``
returns it prints the request id on stdout (flushed): the test treats a printed id as "this
request got its response", so that row must survive a SIGKILL at any moment.

With ``--stale-offset`` it waits until everything is in the database, then rewinds its spool's
committed offset to the start (as if it died between a commit and the offset write), prints
``stale`` and idles until killed: the replay that follows must not count anything twice.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from gateway.ledger.writer import LedgerWriter


def event(request_id: str, index: int) -> dict[str, object]:
    """The ledger row for event ``index`` (numbers the test can sum by hand)."""
    return {
        "request_id": request_id,
        "ts": time.time(),
        "team": "crash-team",
        "key_id": "key_crash",
        "route": "chat",
        "deployment": "sim-chat",
        "provider": "sim",
        "status": "ok",
        "http_status": 200,
        "prompt_tokens": 10,
        "completion_tokens": index % 7,
        "cost_usd": 0.000125,
        "attempts": 1,
    }


def rewind(spool_dir: Path) -> None:
    """Set every committed offset in ``spool_dir`` back to the first segment's start."""
    for offset in spool_dir.glob("*.offset"):
        offset.write_bytes(b"%20d %20d\n" % (1, 0))


async def main(args: argparse.Namespace) -> None:
    writer = LedgerWriter(
        Path(args.spool_dir), args.database_url, "appender", flush_interval_s=0.05
    )
    await writer.start()
    out = sys.stdout
    for index in range(args.count):
        request_id = f"{args.prefix}-{index}"
        writer.append(event(request_id, index))
        out.write(request_id + "\n")
        out.flush()
        await asyncio.sleep(args.interval_ms / 1000)
    await writer.flush()
    if args.stale_offset:
        rewind(Path(args.spool_dir))
        out.write("stale\n")
        out.flush()
        await asyncio.sleep(3600)  # until killed
    await writer.aclose()
    out.write("done\n")
    out.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("spool_dir")
    parser.add_argument("database_url")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--prefix", default="crash")
    parser.add_argument("--interval-ms", type=float, default=1.0)
    parser.add_argument("--flush-interval-s", type=float, default=0.2)
    parser.add_argument("--stale-offset", action="store_true")
    asyncio.run(main(parser.parse_args()))
