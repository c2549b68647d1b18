"""Server-sent events: splitting a byte stream into events, and building events."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import orjson

DONE = b"data: [DONE]\n\n"


async def split_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield each complete SSE event (ending in ``\\n\\n``) as soon as its last byte arrives.

    Holding back at most one partial event is what lets the pipeline look at whole events
    (``[DONE]``, usage) without buffering the stream. CRLF line endings are normalised.
    """
    pending = b""
    async for chunk in chunks:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        pending += chunk
        if b"\n\n" not in pending:
            continue
        *events, pending = pending.split(b"\n\n")
        for event in events:
            if event:
                yield event + b"\n\n"
    if pending.strip():
        yield pending + b"\n\n"


def event(payload: object) -> bytes:
    """One ``data:`` event carrying ``payload`` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def is_done(event_bytes: bytes) -> bool:
    return event_bytes.startswith(b"data: [DONE]")
