"""Where the gateway spends its time under load: py-spy's samples, reduced to a top list.

py-spy is optional (``.venv/bin/pip install py-spy``); it samples the running gateway from
outside (``--nonblocking``: the process is never paused), so the profile costs the gateway
nothing but a little CPU on the machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PY_SPY_HINT = "py-spy is not installed: .venv/bin/pip install py-spy"
_LINE = re.compile(r":\d+\)$")
_STDLIB = re.compile(r"^.*?/lib/python3\.\d+/")
_REPO = str(Path(__file__).resolve().parent.parent) + "/"


def py_spy() -> str | None:
    """The py-spy executable: next to this Python first, then on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start_record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` (collapsed stacks) on ``pid`` for ``seconds``; wait on it later."""
    exe = py_spy()
    if exe is None:
        raise FileNotFoundError(PY_SPY_HINT)
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def short_path(path: str) -> str:
    """An installed module's path from its package on (site-packages or the standard library),
    and this checkout's from its top."""
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1]
    return _STDLIB.sub("", path).replace(_REPO, "")


def frame_name(frame: str) -> str:
    """``handle (gateway/pipeline.py:88)`` -> ``handle (gateway/pipeline.py)``, shortened."""
    head, paren, tail = _LINE.sub(")", frame.strip()).partition("(")
    return f"{head}{paren}{short_path(tail)}"


def top_functions(collapsed: str, limit: int = 25) -> tuple[int, list[dict[str, Any]]]:
    """From py-spy's raw output (``frame;frame;... count`` per line): total samples, and the
    functions with the most samples, each with its self and total (inclusive) share."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return 0, []
    ranked = sorted(inclusive, key=lambda n: (own[n], inclusive[n]), reverse=True)[:limit]
    return total, [
        {
            "function": name,
            "self_pct": round(100 * own[name] / total, 1),
            "total_pct": round(100 * inclusive[name] / total, 1),
        }
        for name in ranked
    ]
