"""A durable local append-only spool: the ledger's copy of an event until the database has it.

Files in the spool directory, per owner (one writer in one process; ``owner`` is
``<replica>-<pid>-<random>`` so a restarted process, even with a recycled pid, never reuses a
name)::

    <owner>.lock            held with flock(LOCK_EX) while the owner lives
    <owner>.<seq>.seg       JSON lines, appended with one write(2) each (O_APPEND)
    <owner>.offset          the committed read position: "<seq> <offset>"

Why this survives what it must:

* **Process crash (SIGKILL, OOM).** ``append`` returns once ``write(2)`` has copied the line into
  the kernel's page cache; the file outlives the process. The kernel also drops the flock, which
  is how a sibling or restarted writer knows the owner is dead and may replay its segments
  (:meth:`Spool.claim`).
* **Machine crash.** Page-cache bytes not yet fsynced are lost. The writer fsyncs on a timer
  (every flush interval), so a power loss loses at most that interval; fsync per append would
  cost milliseconds on the request path.
* **Replays.** The committed offset is written after each batch is in the database, without
  fsync: a stale offset only means rows are inserted again, and inserts are idempotent.

A line without its newline at the end of a dead owner's last segment is a write the kill cut
short; its ``append`` never returned, so it is dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chunk", "Position", "Spool", "fsync_and_close", "owners_in"]

log = logging.getLogger("tollgate.ledger")

READ_BYTES = 256 * 1024
MAX_LINE_BYTES = 16 * 1024 * 1024
_OFFSET_FORMAT = b"%20d %20d\n"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in an owner's spool: segment number and byte offset in it."""

    seq: int
    offset: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """Complete lines read from a spool, and where reading stopped."""

    lines: list[bytes]
    end: Position
    skipped_bytes: int = 0  # a torn tail or an oversized line that was passed over


class Spool:
    """One owner's spool files: appended to by the live owner, read back by its writer.

    Not thread-safe: append, read and commit run on one event loop's thread.
    """

    def __init__(
        self,
        directory: Path,
        owner: str,
        lock_fd: int,
        *,
        live: bool,
        segment_bytes: int,
    ) -> None:
        self.directory = directory
        self.owner = owner
        self.live = live
        self._lock_fd = lock_fd
        self._segment_bytes = segment_bytes
        seqs = _segments_of(directory, owner)
        self._committed = self._read_offset(seqs)
        self._last_seq = max(seqs, default=self._committed.seq)
        self._read_fd = -1
        self._read_seq = -1
        self._write_fd = -1
        self._written = 0
        self._torn = False
        self._unsynced: list[int] = []  # fds of rotated segments not yet fsynced
        self._dir_dirty = False
        self._dirty = False

    # --- owning ------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, replica: str, *, segment_bytes: int = 16 << 20) -> Spool:
        """A new live spool for this process, its lock held and its first segment open."""
        directory.mkdir(parents=True, exist_ok=True)
        name = _UNSAFE.sub("_", replica)[:40] or "gateway"
        owner = f"{name}-{os.getpid()}-{secrets.token_hex(3)}"
        lock_fd = os.open(directory / f"{owner}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(lock_fd, f"pid={os.getpid()} replica={replica}\n".encode())
        except BaseException:
            os.close(lock_fd)
            raise
        spool = cls(directory, owner, lock_fd, live=True, segment_bytes=segment_bytes)
        spool._open_segment(spool._last_seq)
        return spool

    @classmethod
    def claim(cls, directory: Path, owner: str) -> Spool | None:
        """Take over a dead owner's spool for replay, or ``None`` if it lives or is gone."""
        lock_path = directory / f"{owner}.lock"
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory itself went away
            return None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Whoever replayed it before us unlinks the lock file last; the inode we locked
            # must still be the one at that path, or we locked a file nobody else will see.
            if os.fstat(lock_fd).st_ino != os.stat(lock_path).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            os.close(lock_fd)
            return None
        return cls(directory, owner, lock_fd, live=False, segment_bytes=0)

    # --- appending (live owner only) -----------------------------------------------------------

    def append(self, line: bytes) -> None:
        """Append one newline-terminated line with a single ``write(2)`` (the hot path)."""
        if self._torn:
            # An earlier write failed part-way: end that fragment so this line stays whole.
            line = b"\n" + line
        written = os.write(self._write_fd, line)
        if written != len(line):
            written = self._write_rest(line, written)
        self._written += written
        self._dirty = True
        if self._written >= self._segment_bytes:
            self._rotate()

    def _write_rest(self, line: bytes, written: int) -> int:
        try:
            while written < len(line):
                written += os.write(self._write_fd, line[written:])
        except OSError:
            self._torn = True
            raise
        self._torn = False
        return written

    def _rotate(self) -> None:
        self._unsynced.append(self._write_fd)
        self._write_fd = -1
        self._open_segment(self._last_seq + 1)

    def _open_segment(self, seq: int) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._write_fd = os.open(self._segment_path(seq), flags, 0o644)
        self._written = os.fstat(self._write_fd).st_size
        self._last_seq = seq
        self._dir_dirty = True

    def sync_handles(self) -> list[int]:
        """File descriptors to fsync (then close) for everything appended so far.

        The caller owns them (they are duplicates or retired descriptors), so a rotation while
        a thread fsyncs them cannot close one under it.
        """
        if not self.live or not (self._dirty or self._unsynced or self._dir_dirty):
            return []
        handles, self._unsynced = self._unsynced, []
        if self._dirty and self._write_fd >= 0:
            handles.append(os.dup(self._write_fd))
        if self._dir_dirty:
            handles.append(os.open(self.directory, os.O_RDONLY))
            self._dir_dirty = False
        self._dirty = False
        return handles

    # --- reading -----------------------------------------------------------------------------

    @property
    def committed(self) -> Position:
        """Everything before this position is in the database."""
        return self._committed

    def read(self, max_lines: int) -> Chunk:
        """Up to ``max_lines`` complete lines from the committed position on (none: caught up)."""
        position = self._committed
        skipped = 0
        while True:
            fd = self._reader(position.seq)
            if fd < 0:
                if position.seq < self._last_seq:  # a segment deleted by hand, or never made
                    position = Position(position.seq + 1, 0)
                    continue
                return Chunk([], position, skipped)
            data = os.pread(fd, READ_BYTES, position.offset)
            size = READ_BYTES
            while data and b"\n" not in data and len(data) == size and size < MAX_LINE_BYTES:
                size *= 4
                data = os.pread(fd, size, position.offset)
            cut = data.rfind(b"\n")
            if cut >= 0:
                lines = data[:cut].split(b"\n")
                if len(lines) > max_lines:
                    lines = lines[:max_lines]
                consumed = sum(map(len, lines)) + len(lines)
                return Chunk(lines, Position(position.seq, position.offset + consumed), skipped)
            if len(data) >= MAX_LINE_BYTES:
                log.error("ledger spool %s: a line over %d bytes skipped", self.owner, size)
                skipped += len(data)
                position = Position(position.seq, position.offset + len(data))
                continue
            if position.seq < self._last_seq or not self.live:
                # This segment is finished. Its tail without a newline can only be a write that
                # a crash cut short (a live owner always completes its line before rotating).
                if data:
                    log.warning(
                        "ledger spool %s: dropping a torn last line (%d bytes)",
                        self.owner,
                        len(data),
                    )
                    skipped += len(data)
                if position.seq >= self._last_seq:
                    return Chunk([], Position(position.seq, position.offset + len(data)), skipped)
                position = Position(position.seq + 1, 0)
                continue
            return Chunk([], position, skipped)

    def commit(self, end: Position) -> None:
        """Record that everything before ``end`` is in the database; delete finished segments."""
        if end <= self._committed:
            return
        previous, self._committed = self._committed, end
        with contextlib.suppress(OSError):  # a stale offset only costs a replay; never fail here
            self._write_offset(end)
        for seq in range(previous.seq, end.seq):
            if seq == self._read_seq:
                self._close_reader()
            with contextlib.suppress(FileNotFoundError):
                self._segment_path(seq).unlink()

    @property
    def drained(self) -> bool:
        """Whether everything appended is committed (for a dead owner: everything it wrote)."""
        if self._committed.seq < self._last_seq:
            return False
        try:
            size = self._segment_path(self._committed.seq).stat().st_size
        except FileNotFoundError:
            return True
        return self._committed.offset >= size

    def pending_bytes(self) -> int:
        """Bytes in the segments not yet committed (the on-disk backlog)."""
        total = 0
        for seq in range(self._committed.seq, self._last_seq + 1):
            try:
                size = self._segment_path(seq).stat().st_size
            except FileNotFoundError:
                continue
            total += size - (self._committed.offset if seq == self._committed.seq else 0)
        return max(total, 0)

    # --- ending ------------------------------------------------------------------------------

    def close(self, *, remove: bool) -> None:
        """Close every file; with ``remove``, delete the spool (only once it is drained).

        The lock file goes last: until it is gone, a scan still sees an owner to claim.
        """
        for fd in (self._write_fd, *self._unsynced):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    if remove:
                        os.close(fd)
                    else:  # segments stay for a replay: make their bytes durable first
                        os.fsync(fd)
                        os.close(fd)
        self._write_fd, self._unsynced = -1, []
        self._close_reader()
        if remove:
            for seq in _segments_of(self.directory, self.owner):
                with contextlib.suppress(FileNotFoundError):
                    self._segment_path(seq).unlink()
            for suffix in ("offset", "lock"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{self.owner}.{suffix}").unlink()
        os.close(self._lock_fd)  # releases the flock

    # --- internals ---------------------------------------------------------------------------

    def _segment_path(self, seq: int) -> Path:
        return self.directory / f"{self.owner}.{seq:08d}.seg"

    def _reader(self, seq: int) -> int:
        if seq != self._read_seq:
            self._close_reader()
            try:
                self._read_fd = os.open(self._segment_path(seq), os.O_RDONLY)
            except FileNotFoundError:
                return -1
            self._read_seq = seq
        return self._read_fd

    def _close_reader(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
        self._read_fd, self._read_seq = -1, -1

    def _read_offset(self, seqs: list[int]) -> Position:
        first = Position(min(seqs, default=1), 0)
        try:
            seq_text, offset_text = (self.directory / f"{self.owner}.offset").read_bytes().split()
            stored = Position(int(seq_text), int(offset_text))
        except (FileNotFoundError, ValueError):
            return first
        # Segments before the stored position were committed; a crash may have left them.
        for seq in seqs:
            if seq < stored.seq:
                with contextlib.suppress(FileNotFoundError):
                    self._segment_path(seq).unlink()
        return max(stored, first)

    def _write_offset(self, position: Position) -> None:
        path = self.directory / f"{self.owner}.offset"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            # Fixed width, written in place: never shorter than what it overwrites.
            os.pwrite(fd, _OFFSET_FORMAT % (position.seq, position.offset), 0)
        finally:
            os.close(fd)


def owners_in(directory: Path) -> set[str]:
    """Every owner with a file in the spool directory."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {name.split(".", 1)[0] for name in names if name.endswith((".lock", ".seg", ".offset"))}


def fsync_and_close(handles: list[int]) -> None:
    """fsync each descriptor then close it (run in a worker thread: fsync can take ms)."""
    for fd in handles:
        try:
            os.fsync(fd)
        except OSError as exc:
            log.error("ledger spool fsync failed: %s", exc)
        finally:
            os.close(fd)


def _segments_of(directory: Path, owner: str) -> list[int]:
    prefix, seqs = owner + ".", []
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith(".seg"):
            with contextlib.suppress(ValueError):
                seqs.append(int(name[len(prefix) : -4]))
    return sorted(seqs)
