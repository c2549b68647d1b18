"""Finding files that installed packages ship, without importing them.

litellm ships tiktoken's encodings and a price map; importing litellm costs seconds and
~190 MB, so its files are located through the import system's metadata instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path | None:
    """The directory of the installed package ``name`` (not imported), or None if absent."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
