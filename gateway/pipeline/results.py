"""What the pipeline hands the HTTP layer to render (no web framework types here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JsonResult:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class StreamResult:
    events: AsyncIterator[bytes]
    headers: dict[str, str]
