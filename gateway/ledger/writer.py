"""The ledger writer: a cheap synchronous append on the request path, batched inserts behind it.

::

    request path                    background task (same event loop)
    ------------                    ---------------------------------
    append(row)                     every flush interval, or sooner once batch_rows are waiting:
      orjson line -> write(2)         read <= batch_rows lines from the spool
      (O_APPEND spool segment)        INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING
                                      upsert the daily roll-up for the rows actually inserted
                                      commit; then advance the spool's committed offset
                                    fsync the spool every flush interval
                                    replay the spools of dead writers (same spool directory)

Nothing is lost: an event is on disk before ``append`` returns (a SIGKILL loses nothing; a power
cut loses at most one fsync interval), the database outage backlog stays on disk (at most one
batch is in memory), and a graceful shutdown drains before exit. Nothing is counted twice: the
row insert and its roll-up commit in one transaction, and a replayed row that conflicts on
``request_id`` is neither inserted nor rolled up again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import create_engine, redact_url
from gateway.ledger.inserts import LedgerInserts, Unwritable
from gateway.ledger.rows import ledger_row
from gateway.ledger.spool import Chunk, Spool, fsync_and_close, owners_in
from gateway.record import RequestRecord

__all__ = ["LedgerWriter"]

log = logging.getLogger("tollgate.ledger")

_CHECKPOINTS = 512


class _GiveUp(Exception):
    """Shutting down, the drain deadline passed and the database is still away."""


class LedgerWriter:
    """Durable, batched, idempotent writes of ledger rows from one gateway process.

    ``database`` is a URL (the writer makes and disposes a small engine) or an engine the caller
    owns. Rows whose insert fails for their content (never for an outage) are written to
    ``<spool_dir>/rejected.jsonl`` and logged, so one bad row cannot hold up the rest.
    """

    def __init__(
        self,
        spool_dir: Path,
        database: str | AsyncEngine,
        replica: str,
        *,
        batch_rows: int = 500,
        flush_interval_s: float = 0.2,
        segment_bytes: int = 16 << 20,
        orphan_scan_interval_s: float = 10.0,
        drain_timeout_s: float = 30.0,
        retry_max_s: float = 5.0,
        log_interval_s: float = 30.0,
    ) -> None:
        if batch_rows < 1 or flush_interval_s <= 0:
            raise ValueError("batch_rows must be >= 1 and flush_interval_s > 0")
        self.spool_dir = Path(spool_dir)
        self.replica = replica
        self._database = database
        self._engine: AsyncEngine | None = database if isinstance(database, AsyncEngine) else None
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._segment_bytes = segment_bytes
        self._scan_interval_s = orphan_scan_interval_s
        self._drain_timeout_s = drain_timeout_s
        self._retry_max_s = retry_max_s
        self._log_interval_s = log_interval_s
        self._spool: Spool | None = None
        self._orphans: dict[str, Spool] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._closing = False
        self._deadline = 0.0
        self._scan_requested = False
        self._scans = 0
        self._appended = 0
        self._committed = 0
        self._inflight = 0
        # (rows appended so far, when): lag is the age of the first checkpoint not yet committed.
        self._checkpoints: collections.deque[tuple[int, float]] = collections.deque()
        self._inserts: LedgerInserts | None = None
        self.rows_inserted = 0  # new rows (duplicates of rows already stored are not counted)
        self.rows_replayed = 0  # rows read from dead writers' spools
        self.rows_rejected = 0
        self._down_since: float | None = None
        self._last_log = 0.0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open this process's spool, then start the background task (replays orphans too)."""
        if self._spool is not None:
            raise RuntimeError("LedgerWriter already started")
        # The spool first: an unwritable directory fails here, before anything needs closing.
        self._spool = Spool.create(self.spool_dir, self.replica, segment_bytes=self._segment_bytes)
        if self._engine is None:
            assert isinstance(self._database, str)
            self._engine = create_engine(self._database, pool_size=2, max_overflow=0)
        self._inserts = LedgerInserts(self._engine)
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def aclose(self) -> None:
        """Drain everything appended (waiting up to ``drain_timeout_s`` for the database), stop.

        Rows the database could not take in time stay in the spool for the next writer.
        """
        if self._task is None:
            return
        self._closing = True
        self._deadline = time.monotonic() + self._drain_timeout_s
        self._wake.set()
        task = self._task
        try:
            await task
        finally:
            if not task.done():  # aclose itself was cancelled: stop the task before closing
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None
            spool, self._spool = self._spool, None
            if spool is not None:
                left = self._appended - self._committed
                if left:
                    log.warning(
                        "ledger: %d rows stay in the spool %s until a writer replays them",
                        left,
                        spool.owner,
                    )
                spool.close(remove=left == 0 and spool.drained)
            for orphan in self._orphans.values():
                orphan.close(remove=orphan.drained)
            self._orphans.clear()
            self._progress.set()
            if not isinstance(self._database, AsyncEngine) and self._engine is not None:
                await self._engine.dispose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- the request path --------------------------------------------------------------------

    def append(self, row: dict[str, Any]) -> None:
        """Spool one ledger row (see :func:`gateway.ledger.rows.ledger_row`); microseconds.

        Synchronous: when it returns, the row is in the kernel and survives this process. Call
        it from the event loop's thread. Raises ``OSError`` if the spool cannot be written
        (disk full), ``TypeError`` for a value JSON cannot hold, ``RuntimeError`` if the writer
        is not running.
        """
        spool = self._spool
        if spool is None:
            raise RuntimeError("the ledger writer is not running (start() it first)")
        spool.append(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        self._appended += 1
        if self._appended - self._committed == self._batch_rows:
            self._wake.set()

    def append_record(self, record: RequestRecord) -> bool:
        """Spool the row for a finished request; False if it has no team (unauthenticated)."""
        row = ledger_row(record)
        if row is None:
            return False
        self.append(row)
        return True

    # --- metrics -----------------------------------------------------------------------------

    @property
    def backlog_rows(self) -> int:
        """Rows this process appended that are not yet in the database."""
        return self._appended - self._committed

    @property
    def lag_seconds(self) -> float:
        """How long the oldest row not yet in the database has waited (to a flush interval)."""
        if self._appended == self._committed:
            return 0.0
        for count, at in self._checkpoints:
            if count > self._committed:
                return max(time.monotonic() - at, 0.0)
        return 0.0

    @property
    def inflight_rows(self) -> int:
        """Rows held in memory: at most one batch, however long the database is away."""
        return self._inflight

    @property
    def orphan_backlog_bytes(self) -> int:
        """Spooled bytes of dead writers this process is replaying."""
        return sum(orphan.pending_bytes() for orphan in self._orphans.values())

    @property
    def database_down_s(self) -> float:
        """How long inserts have been failing (0 when they succeed)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    async def flush(self, *, orphans: bool = False) -> None:
        """Wait until every row appended so far is in the database.

        With ``orphans``, also scan for dead writers' spools now and wait until they are
        replayed. Returns early (with rows still spooled) if the writer is closed meanwhile.
        """
        target = self._appended
        scans = self._scans + 1 if orphans else 0
        if orphans:
            self._scan_requested = True
        while self._task is not None and not self._task.done():
            if (
                self._committed >= target
                and self._scans >= scans
                and not (orphans and self._orphans)
            ):
                return
            self._wake.set()
            await self._progress.wait()

    # --- the background task -----------------------------------------------------------------

    async def _run(self) -> None:
        next_scan = next_sync = 0.0
        while True:
            now = time.monotonic()
            if now >= next_scan or self._scan_requested:
                self._claim_orphans()
                next_scan = now + self._scan_interval_s
            if now >= next_sync:
                await self._sync()
                next_sync = now + self._flush_interval_s
            self._checkpoint(now)
            # Cleared before reading: a wake-up arriving during the insert is kept for the pause.
            self._wake.clear()
            try:
                read = await self._write_one_batch()
            except _GiveUp:
                break
            except Exception:  # a bug must not stop the ledger: log it, back off, go on
                log.exception("ledger writer step failed")
                read = 0
                await asyncio.sleep(1.0)
            if read >= self._batch_rows:
                continue  # a full batch: more is probably waiting
            if self._closing and (read == 0 or time.monotonic() >= self._deadline):
                break  # everything readable is in (or the deadline passed): the rest replays
            self._progress.set()
            self._progress = asyncio.Event()
            if not self._closing:
                await self._pause(self._flush_interval_s)
        await self._sync()

    async def _pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``; an append that completes a batch (or a flush) wakes us."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _checkpoint(self, now: float) -> None:
        marks = self._checkpoints
        while marks and marks[0][0] <= self._committed:
            marks.popleft()
        if self._appended > self._committed and (not marks or marks[-1][0] < self._appended):
            if len(marks) >= _CHECKPOINTS:
                # A long outage: keep the oldest mark (the lag), thin the rest.
                oldest = marks.popleft()
                thinned = list(marks)[1::2]
                marks.clear()
                marks.extend([oldest, *thinned])
            marks.append((self._appended, now))

    async def _sync(self) -> None:
        if self._spool is None:
            return
        handles = self._spool.sync_handles()
        if handles:
            await asyncio.to_thread(fsync_and_close, handles)

    def _claim_orphans(self) -> None:
        self._scan_requested = False
        mine = {self._spool.owner} if self._spool is not None else set()
        for owner in owners_in(self.spool_dir) - mine - set(self._orphans):
            orphan = Spool.claim(self.spool_dir, owner)
            if orphan is None:
                continue
            if orphan.drained:
                orphan.close(remove=True)
                continue
            log.info("ledger: replaying the spool of a stopped writer %s", owner)
            self._orphans[owner] = orphan
        self._scans += 1

    async def _write_one_batch(self) -> int:
        """Insert the next batch (own rows first); how many spool lines it consumed."""
        spool = self._spool
        if spool is None:
            return 0
        source, chunk = spool, spool.read(self._batch_rows)
        if not chunk.lines:
            spool.commit(chunk.end)
            found = self._next_orphan_chunk()
            if found is None:
                return 0
            source, chunk = found
        rows = [line for line in chunk.lines if line]  # b"": the end of a failed append
        self._inflight = len(chunk.lines)
        try:
            await self._write_until_done(rows)
        finally:
            self._inflight = 0
        source.commit(chunk.end)
        if source is spool:
            # min(): the fragment of a failed append is a line no append counted.
            self._committed = min(self._committed + len(chunk.lines), self._appended)
        else:
            self.rows_replayed += len(chunk.lines)
            if source.drained:
                log.info("ledger: replayed the spool of %s", source.owner)
                self._orphans.pop(source.owner).close(remove=True)
        self._progress.set()
        self._progress = asyncio.Event()
        return len(chunk.lines)

    def _next_orphan_chunk(self) -> tuple[Spool, Chunk] | None:
        for owner, orphan in list(self._orphans.items()):
            chunk = orphan.read(self._batch_rows)
            if chunk.lines:
                return orphan, chunk
            orphan.commit(chunk.end)
            if orphan.drained:
                log.info("ledger: replayed the spool of %s", owner)
                self._orphans.pop(owner).close(remove=True)
        return None

    async def _write_until_done(self, rows: list[bytes]) -> None:
        """Insert ``rows``, retrying while the database is away (until the drain deadline)."""
        failures = 0
        while True:
            try:
                await self._write(rows)
            except Exception as exc:
                failures += 1
                self._outage(exc)
                if self._closing and time.monotonic() >= self._deadline:
                    raise _GiveUp from exc
                # Keep the fsync timer and the lag marks going through an outage.
                await self._sync()
                self._checkpoint(time.monotonic())
                await asyncio.sleep(min(self._retry_max_s, 0.05 * 2 ** min(failures, 10)))
                continue
            if self._down_since is not None:
                log.warning(
                    "ledger: database back after %.1f s; %d rows waiting",
                    time.monotonic() - self._down_since,
                    self.backlog_rows,
                )
                self._down_since = None
            return

    async def _write(self, rows: list[bytes]) -> None:
        """Insert; on a content error, split the batch to find and set aside the bad rows."""
        if not rows:
            return
        assert self._inserts is not None
        try:
            self.rows_inserted += await self._inserts.insert(rows)
        except Unwritable as exc:
            if len(rows) == 1:
                self._reject(rows, str(exc))
                return
            half = len(rows) // 2
            await self._write(rows[:half])
            await self._write(rows[half:])

    def _outage(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if now - self._last_log >= self._log_interval_s:
            self._last_log = now
            engine = self._engine
            where = redact_url(str(engine.url)) if engine is not None else "?"
            log.error(
                "ledger: cannot write to %s (%s: %s); %d rows wait in the spool, retrying",
                where,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                self.backlog_rows,
            )

    def _reject(self, lines: list[bytes], reason: str) -> None:
        self.rows_rejected += len(lines)
        log.error("ledger: %d row(s) set aside in rejected.jsonl: %s", len(lines), reason[:300])
        path = self.spool_dir / "rejected.jsonl"
        with path.open("ab") as out:
            for line in lines:
                out.write(orjson.dumps({"reason": reason, "row": line.decode(errors="replace")}))
                out.write(b"\n")
            out.flush()
            os.fsync(out.fileno())
