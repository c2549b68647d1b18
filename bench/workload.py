"""Request bodies: distinct small prompts (real cache misses), a repeated one (hits), a huge one.

Bodies are compact JSON, built the same way for the direct and the gateway request, so both
sides parse the same bytes.
"""

from __future__ import annotations

import orjson

# The upstream model name in the bench policies (an OpenAI name, so tokens count with o200k).
UPSTREAM_MODEL = "gpt-4o-mini"


class Bodies:
    """Builds request bodies whose prompts never repeat within a run (unless asked to)."""

    def __init__(self, run_id: str, route: str = "chat", max_tokens: int = 16) -> None:
        self.run_id = run_id
        self.route = route
        self.max_tokens = max_tokens
        self._next = 0

    def distinct(self, *, stream: bool = False, route: str | None = None) -> bytes:
        """A prompt no other request of this run has sent: the cache must miss."""
        self._next += 1
        text = f"bench {self.run_id} #{self._next}: name one colour of the sky at dusk."
        return self._body(text, stream=stream, route=route)

    def fixed(self, label: str, *, stream: bool = False) -> bytes:
        """The same prompt every time for one ``label``: after the first, the cache can hit."""
        return self._body(f"bench {self.run_id} fixed {label}: name one colour.", stream=stream)

    def big(self, filler: str) -> bytes:
        """``filler`` (e.g. 100k tokens of text) behind a distinct prefix, so it never hits."""
        self._next += 1
        return self._body(f"bench {self.run_id} big #{self._next}. {filler}", stream=False)

    def _body(self, text: str, *, stream: bool, route: str | None = None) -> bytes:
        body: dict[str, object] = {
            "model": route or self.route,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": self.max_tokens,
        }
        if stream:
            body["stream"] = True
        return orjson.dumps(body)


def filler_text(tokens: int) -> str:
    """Text of exactly ``tokens`` tokens for :data:`UPSTREAM_MODEL` (checked with tiktoken)."""
    from gateway.tokens import encode_exact  # the gateway's own counter: offline encodings

    return encode_exact(tokens, UPSTREAM_MODEL)
