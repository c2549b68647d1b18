"""Request bodies of a chosen prompt length, built without a tokenizer.

Every word in :data:`WORDS` is one token (with its leading space) in OpenAI's cl100k and o200k
encodings, so N words are about N tokens; a chat message adds about 7 tokens of framing, which
is subtracted. Each prompt starts with its request number and takes its words from a random
place in a shuffled pool, so no two prompts share a prefix: neither the gateway's prompt cache
nor an upstream's prefix cache makes the run look faster than real traffic. The usage the
server reports gives the exact counts.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from gateway.loadgen.config import BenchConfig

_WORD_TEXT = (
    "the of and to in is that for it as with was on be at by this had not are but from or "
    "have an they which one you were her all she there would their we him been has when who "
    "will more no if out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take "
    "three"
)
WORDS = tuple(_WORD_TEXT.split())
CHAT_FRAMING_TOKENS = 7
PREFIX_TOKENS = 3  # "Request 123:"
_POOL_WORDS = 8192


class PromptFactory:
    """Builds the JSON body of request ``i`` with lengths drawn from the config."""

    def __init__(self, config: BenchConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        pool = [rng.choice(WORDS) for _ in range(_POOL_WORDS)]
        self._pool = pool + pool  # a window may wrap around
        self._framing = PREFIX_TOKENS + (CHAT_FRAMING_TOKENS if config.endpoint == "chat" else 0)

    def text(self, index: int, tokens: int) -> str:
        """About ``tokens`` tokens of text (the framing included), unique to ``index``."""
        words = max(1, tokens - self._framing)
        if words > _POOL_WORDS:
            repeats = -(-words // _POOL_WORDS)
            chosen = (self._pool[:_POOL_WORDS] * repeats)[:words]
        else:
            start = self._rng.randrange(_POOL_WORDS)
            chosen = self._pool[start : start + words]
        return f"Request {index}: " + " ".join(chosen)

    def body(self, index: int) -> tuple[bytes, int]:
        """The request body and the number of output tokens it asks for."""
        config = self._config
        output = config.output_tokens.draw(self._rng)
        prompt = self.text(index, config.prompt_tokens.draw(self._rng))
        body: dict[str, Any] = {"model": config.model, "max_tokens": output}
        if config.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if config.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if config.ignore_eos:
            body["ignore_eos"] = True  # vLLM / TGI: generate exactly max_tokens
        return orjson.dumps(body), output
