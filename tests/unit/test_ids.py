"""Per-process unique ids: a random part drawn once, then a counter."""

from __future__ import annotations

import itertools

from gateway.ids import unique_ids


def test_ids_never_repeat_and_keep_their_prefix_and_width() -> None:
    ids = list(itertools.islice(unique_ids("req_", digits=8), 1000))
    assert len(set(ids)) == 1000
    assert all(i.startswith("req_") and len(i) == 4 + 16 + 8 for i in ids)
    assert ids[0].endswith("00000001") and ids[255].endswith("00000100")


def test_two_processes_draw_different_random_parts() -> None:
    first, second = next(unique_ids()), next(unique_ids())
    assert first != second and first.endswith("1") and second.endswith("1")
