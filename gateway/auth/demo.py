"""The demo key: one key that works out of the box, kept in ``data_dir/demo_key``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from gateway.auth.keys import generate_key
from gateway.auth.store import KeyStore

__all__ = ["DEMO_KEY_FILE", "ensure_demo_key"]

DEMO_KEY_FILE = "demo_key"


async def ensure_demo_key(store: KeyStore, data_dir: Path, team: str) -> str:
    """The demo key's plaintext, creating the file (mode 600) and the database row if needed.

    The file is the source of truth: a recreated database gets the same key back, so clients
    configured with it keep working.
    """
    plaintext = _read_or_create(data_dir / DEMO_KEY_FILE)
    await store.ensure_key(team, plaintext, name="demo")
    return plaintext


def _read_or_create(path: Path) -> str:
    if path.exists():
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".demo_key.")  # created with mode 600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_key() + "\n")
        # link() publishes the complete file atomically and fails if a process starting
        # alongside us got there first, in which case its key wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read(path)


def _read(path: Path) -> str:
    plaintext = path.read_text().strip()
    if not plaintext:
        raise ValueError(f"{path} is empty: delete it to have a new demo key generated")
    return plaintext
