"""Identifiers unique across replicas without a system call each.

``secrets.token_hex`` makes a ``getrandom(2)`` call every time; on the request path that is a
system call per request for nothing. A process instead draws 64 random bits once and counts.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator


def unique_ids(prefix: str = "", digits: int = 0) -> Iterator[str]:
    """``prefix`` + this process's 16 random hex digits + a counter in hex (zero-padded to
    ``digits``): never repeats within the process, and two processes collide only if their
    random parts do (one chance in 2**64)."""
    base = prefix + secrets.token_hex(8)
    return (f"{base}{n:0{digits}x}" for n in itertools.count(1))
