"""The ledger spool on a real file system: append, read back, commit, rotate, claim, replay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.ledger.spool import Position, Spool, fsync_and_close, owners_in


def lines(n: int, start: int = 0) -> list[bytes]:
    return [b'{"i":%d}' % i for i in range(start, start + n)]


def fill(spool: Spool, n: int, start: int = 0) -> None:
    for line in lines(n, start):
        spool.append(line + b"\n")


def drain(spool: Spool, batch: int = 1000) -> list[bytes]:
    """Read and commit everything readable, as the writer does after each insert."""
    seen: list[bytes] = []
    while True:
        chunk = spool.read(batch)
        spool.commit(chunk.end)
        if not chunk.lines:
            return seen
        seen.extend(chunk.lines)


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.seg"))


def test_append_read_commit(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "gw-1")
    fill(spool, 10)

    first = spool.read(4)
    assert first.lines == lines(4)
    # Not committed yet: reading again gives the same lines (a failed insert is retried).
    assert spool.read(4).lines == lines(4)
    spool.commit(first.end)
    assert spool.read(100).lines == lines(6, start=4)
    assert drain(spool) == lines(6, start=4)
    assert spool.drained
    assert spool.pending_bytes() == 0
    spool.close(remove=True)
    assert list(tmp_path.iterdir()) == []


def test_a_partly_visible_last_line_of_a_live_spool_waits(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "gw")
    fill(spool, 2)
    segment = tmp_path / segments(tmp_path)[0]
    with segment.open("ab") as raw:  # what a reader can see mid-write(2)
        raw.write(b'{"i":')
    chunk = spool.read(100)
    assert chunk.lines == lines(2)
    spool.commit(chunk.end)
    assert spool.read(100).lines == []
    with segment.open("ab") as raw:
        raw.write(b"2}\n")
    assert spool.read(100).lines == [b'{"i":2}']
    spool.close(remove=False)


def test_segments_rotate_and_committed_ones_are_deleted(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "gw", segment_bytes=64)
    fill(spool, 30)  # 8 bytes a line: a new segment every 8 lines
    assert len(segments(tmp_path)) == 4

    assert drain(spool, batch=5) == lines(30)
    # Only the segment being appended to is left.
    assert len(segments(tmp_path)) == 1
    fill(spool, 3, start=30)
    assert drain(spool) == lines(3, start=30)
    spool.close(remove=True)


def test_a_live_owner_cannot_be_claimed(tmp_path: Path) -> None:
    live = Spool.create(tmp_path, "gw")
    fill(live, 3)
    assert owners_in(tmp_path) == {live.owner}
    assert Spool.claim(tmp_path, live.owner) is None
    live.close(remove=False)


def test_a_dead_owners_spool_is_replayed_from_its_committed_offset(tmp_path: Path) -> None:
    dead = Spool.create(tmp_path, "gw", segment_bytes=64)
    fill(dead, 20)
    chunk = dead.read(5)
    dead.commit(chunk.end)  # 5 lines reached the database before the crash
    dead.close(remove=False)  # closing the lock fd is what a SIGKILL does to it

    orphan = Spool.claim(tmp_path, dead.owner)
    assert orphan is not None
    assert not orphan.live
    assert Spool.claim(tmp_path, dead.owner) is None  # one replayer at a time
    assert drain(orphan, batch=7) == lines(15, start=5)
    assert orphan.drained
    orphan.close(remove=True)
    assert owners_in(tmp_path) == set()


def test_a_torn_last_line_of_a_dead_owner_is_dropped(tmp_path: Path) -> None:
    dead = Spool.create(tmp_path, "gw")
    fill(dead, 3)
    with (tmp_path / segments(tmp_path)[0]).open("ab") as raw:
        raw.write(b'{"i":3, "cut sho')  # the write a SIGKILL interrupted
    dead.close(remove=False)

    orphan = Spool.claim(tmp_path, dead.owner)
    assert orphan is not None
    chunk = orphan.read(100)
    assert chunk.lines == lines(3)
    orphan.commit(chunk.end)
    tail = orphan.read(100)
    assert tail.lines == [] and tail.skipped_bytes == len(b'{"i":3, "cut sho')
    orphan.commit(tail.end)
    assert orphan.drained
    orphan.close(remove=True)


def test_a_stale_offset_replays_rather_than_loses(tmp_path: Path) -> None:
    dead = Spool.create(tmp_path, "gw")
    fill(dead, 4)
    dead.commit(dead.read(100).end)
    dead.close(remove=False)
    (tmp_path / f"{dead.owner}.offset").write_bytes(b"garbage")

    orphan = Spool.claim(tmp_path, dead.owner)
    assert orphan is not None
    assert orphan.committed == Position(1, 0)
    assert drain(orphan) == lines(4)
    orphan.close(remove=True)


def test_segments_before_the_committed_one_are_cleaned_up_on_claim(tmp_path: Path) -> None:
    dead = Spool.create(tmp_path, "gw", segment_bytes=16)
    fill(dead, 6)  # three segments of two lines
    for _ in range(2):  # a read stops at the end of a segment
        chunk = dead.read(4)
        dead.commit(chunk.end)
    assert chunk.end == Position(2, 16)
    dead.close(remove=False)
    # A crash between the offset write and the unlink would leave segment 1 behind.
    (tmp_path / f"{dead.owner}.00000001.seg").write_bytes(b'{"i":0}\n{"i":1}\n')

    orphan = Spool.claim(tmp_path, dead.owner)
    assert orphan is not None
    assert f"{dead.owner}.00000001.seg" not in segments(tmp_path)
    assert drain(orphan) == lines(2, start=4)
    orphan.close(remove=True)


def test_an_owner_with_only_a_lock_file_is_claimed_and_removed(tmp_path: Path) -> None:
    (tmp_path / "gw-1-abcdef.lock").write_bytes(b"")
    orphan = Spool.claim(tmp_path, "gw-1-abcdef")
    assert orphan is not None and orphan.drained
    orphan.close(remove=True)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_cannot_glue_two_lines_together(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "gw")
    spool.append(b'{"i":0}\n')
    real_fd = spool._write_fd
    spool._write_fd = os.open(os.devnull, os.O_RDONLY)  # every write now fails
    with pytest.raises(OSError):
        spool.append(b'{"i":1}\n')
    os.close(spool._write_fd)
    spool._write_fd = real_fd
    spool._torn = True  # as _write_rest leaves it after a short write then an error
    spool.append(b'{"i":2}\n')
    assert drain(spool) == [b'{"i":0}', b"", b'{"i":2}']
    spool.close(remove=True)


def test_sync_handles_cover_rotated_segments_and_the_directory(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "gw", segment_bytes=16)
    assert len(spool.sync_handles()) == 1  # the directory (a new segment file)
    assert spool.sync_handles() == []  # nothing new
    fill(spool, 3)  # rotates once
    handles = spool.sync_handles()
    assert len(handles) == 3  # the retired segment, the current one, the directory
    fsync_and_close(handles)
    for fd in handles:
        with pytest.raises(OSError):
            os.fstat(fd)
    spool.close(remove=True)


def test_owner_names_are_unique_and_safe(tmp_path: Path) -> None:
    a = Spool.create(tmp_path, "gw/../evil host.example.com")
    b = Spool.create(tmp_path, "gw/../evil host.example.com")
    assert a.owner != b.owner
    assert "/" not in a.owner and "." not in a.owner
    assert owners_in(tmp_path) == {a.owner, b.owner}
    a.close(remove=True)
    b.close(remove=True)
