"""The prompt's tokens as the budget sees them before the call: exact, or a bound.

Counting is exact below a body size. Above it, the request body's length in bytes stands in: a
byte-level BPE token covers at least one byte of text, and the JSON around the text is longer than
the few tokens each message adds, so no tokenizer can count more tokens than the body has bytes.
The reservation is then larger than needed but never too small, the upstream's usage settles the
real amount, and a 100k-token prompt costs no core-time of counting on the request path. The exact
count is still taken when something needs it: a refused reservation (the bound may not fit where
the real count would) or an upstream that reports no usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class PromptCount:
    """``tokens`` (exact when ``exact``), and the way to count exactly on demand (once)."""

    __slots__ = ("_count", "exact", "tokens")

    def __init__(self, tokens: int, exact: bool, count: Callable[[], int]) -> None:
        self.tokens = tokens
        self.exact = exact
        self._count = count

    def exactly(self) -> int:
        """The exact count, counted here and now if need be (a rare path: it blocks)."""
        if not self.exact:
            self.tokens, self.exact = self._count(), True
        return self.tokens

    async def exactly_async(self) -> int:
        """The exact count, counted in a worker thread if need be."""
        if not self.exact:
            self.tokens, self.exact = await asyncio.to_thread(self._count), True
        return self.tokens
