"""Counting tokens the way OpenAI bills them, with tiktoken and without the network.

tiktoken downloads its BPE files on first use. The litellm package ships the ``cl100k_base``,
``o200k_base`` and ``p50k_base`` files under the names tiktoken caches them by (sha1 of the URL),
so pointing ``TIKTOKEN_CACHE_DIR`` there makes counting work offline. The directory is found with
``importlib`` (importing litellm costs ~2.8 s) and set just before the first encoding is loaded,
unless the user chose a cache directory.

Two ways in, one implementation:

* module functions (``count_chat``, ``count_prompt`` ...) for callers without state (the simulator);
* :class:`TokenCounter`, an instance the gateway keeps in its services, which also remembers the
  encoding of each model name it has seen and how big a prompt must be to be counted in a thread.

Text is encoded with ``encode_ordinary``: special-token text such as ``<|endoftext|>`` in a
prompt is counted as plain text instead of raising, as the API does.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec

import tiktoken

from gateway.heap_trim import release_free_memory
from gateway.packages import package_dir

# OpenAI cookbook, "How to count tokens with tiktoken": every message is framed as
# <|start|>{role/name}\n{content}<|end|>\n and every reply is primed with
# <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

# Images are counted at the low-detail price: 85 tokens each. High detail adds 170 tokens per
# 512 px tile, which needs the image's size; fetching images to count them is not worth it here.
IMAGE_TOKENS = 85

# Size (characters of text) from which the async counters move the work to a thread. Encoding
# runs at roughly 10-20 MB/s, so 16k characters is about a millisecond of event-loop time.
OFFLOAD_CHARS = 16_000

P = ParamSpec("P")

CL100K = "cl100k_base"
O200K = "o200k_base"

# Model families tokenized with o200k_base (after stripping ``provider/`` and ``ft:``). Every
# other model (gpt-4, gpt-3.5, text-embedding-*, unknown ones such as llama or claude) uses
# cl100k_base: the unknown ones are not OpenAI's to bill, and cl100k is the common estimate.
_O200K_PREFIXES = (
    "gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "o1", "o3", "o4", "codex-",
)  # fmt: skip

# Words that are one token each in both cl100k_base and o200k_base. Each starts with a space and
# is all lowercase letters, so both encodings' pre-tokenizers split a run of them at every word:
# n words are exactly n tokens. The simulator streams them one token per event.
FILLER_WORDS: tuple[str, ...] = (
    " the", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog",
    " and", " runs", " away", " from", " a", " big", " red", " cat", " in", " the",
    " park", " on", " a", " sunny", " day", " to", " see", " an", " old", " tree",
    " near", " the", " river", " with", " blue", " sky",
)  # fmt: skip


@functools.lru_cache(maxsize=1024)
def encoding_name_for(model: str) -> str:
    """The tiktoken encoding name for ``model`` (``o200k_base`` or ``cl100k_base``)."""
    name = model.strip().lower().rsplit("/", 1)[-1]  # openai/gpt-4o, azure/..., a/b/c
    name = name.removeprefix("ft:")  # ft:gpt-4o-mini:acme::id
    return O200K if name.startswith(_O200K_PREFIXES) else CL100K


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """Load (once per process) the tiktoken encoding ``name``, offline if possible.

    Loaded on first use only, so a process holds just the encodings its models need (o200k_base
    costs ~45 MB resident, cl100k_base ~24 MB). tiktoken's registry makes it one object per
    process, shared with any other caller of ``tiktoken.get_encoding``, even across threads.
    """
    _use_bundled_tiktoken_files()
    encoding = tiktoken.get_encoding(name)
    _drop_python_ranks(encoding)
    # Loading an encoding goes through ~30 MB of short-lived Python objects, whose pages glibc
    # would otherwise keep: a server never needs that much scratch space again (~4 MB back
    # after o200k_base).
    release_free_memory()
    return encoding


def _drop_python_ranks(encoding: tiktoken.Encoding) -> None:
    # tiktoken builds its Rust tokenizer from a dict of every token's bytes to its rank, then
    # keeps that dict on the Encoding (200k bytes objects: ~28 MB for o200k_base) for one
    # purpose: pickling an encoding that is not in its registry. A registered one pickles by
    # name, and encoding and decoding only use the Rust copy, so the dict can go. Emptied in
    # place: the registry hands out this same object. Skipped if tiktoken ever changes shape.
    ranks = getattr(encoding, "_mergeable_ranks", None)
    if isinstance(ranks, dict) and tiktoken.registry.ENCODINGS.get(encoding.name) is encoding:
        ranks.clear()


def encoding_for(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding for ``model``."""
    return get_encoding(encoding_name_for(model))


def bundled_tiktoken_dir() -> Path | None:
    """litellm's directory of tiktoken files, found without importing litellm (None if absent)."""
    folder = package_dir("litellm")
    if folder is None:
        return None
    path = folder / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def _use_bundled_tiktoken_files() -> None:
    # A cache directory the user chose (tiktoken also honours DATA_GYM_CACHE_DIR) wins.
    if "TIKTOKEN_CACHE_DIR" in os.environ or "DATA_GYM_CACHE_DIR" in os.environ:
        return
    path = bundled_tiktoken_dir()
    if path is not None:
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(path))


# --- counting on a given encoding (pure functions) -----------------------------------------------


def _text(enc: tiktoken.Encoding, value: object) -> int:
    return len(enc.encode_ordinary(value)) if isinstance(value, str) and value else 0


def _content(enc: tiktoken.Encoding, content: object) -> int:
    if isinstance(content, str):
        return _text(enc, content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            total += IMAGE_TOKENS
        else:  # text, refusal: whatever text the part carries
            total += _text(enc, part.get("text")) + _text(enc, part.get("refusal"))
    return total


def _function_call(enc: tiktoken.Encoding, call: object) -> int:
    if not isinstance(call, dict):
        return 0
    return _text(enc, call.get("name")) + _text(enc, call.get("arguments"))


def _tool_calls(enc: tiktoken.Encoding, calls: object) -> int:
    if not isinstance(calls, list):
        return 0
    return sum(_function_call(enc, c.get("function")) for c in calls if isinstance(c, dict))


def _messages(enc: tiktoken.Encoding, messages: object) -> int:
    total = REPLY_PRIMING
    if not isinstance(messages, list):
        return total
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _content(enc, value)
            elif key == "tool_calls":
                total += _tool_calls(enc, value)
            elif key == "function_call":
                total += _function_call(enc, value)
            elif isinstance(value, str):  # role, name, tool_call_id ...
                total += _text(enc, value)
                if key == "name":
                    total += TOKENS_PER_NAME
    return total


def _function_definitions(tools: object, functions: object) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
                found.append(tool["function"])
    if isinstance(functions, list):
        found.extend(f for f in functions if isinstance(f, dict))
    return found


def _strip_period(value: object) -> str:
    text = value if isinstance(value, str) else ""
    return text[:-1] if text.endswith(".") else text


def _definitions(enc: tiktoken.Encoding, tools: object, functions: object) -> int:
    """Tokens taken by ``tools``/``functions`` definitions: an approximation.

    The API renders definitions into a hidden system message whose format is not published. This
    is the OpenAI cookbook's formula ("Counting tokens for chat completions with tool calls"),
    which matches the API on its examples::

        for each function:   func_init + tokens("name:description")   (minus a final ".")
          if it has properties:  prop_init
            for each property:   prop_key + tokens("key:type:description")
              if it has an enum: enum_init + sum(enum_item + tokens(item))
        once, if any:        func_end

    with func_init = 7 on o200k_base models (gpt-4o) and 10 on cl100k_base ones (gpt-4,
    gpt-3.5-turbo); prop_init = 3, prop_key = 3, enum_init = -3, enum_item = 3, func_end = 12.
    Nested object properties are not counted separately.
    """
    definitions = _function_definitions(tools, functions)
    if not definitions:
        return 0
    func_init = 7 if enc.name == O200K else 10
    prop_init, prop_key, enum_init, enum_item, func_end = 3, 3, -3, 3, 12
    total = func_end
    for definition in definitions:
        name = definition.get("name")
        description = _strip_period(definition.get("description"))
        line = f"{name if isinstance(name, str) else ''}:{description}"
        total += func_init + _text(enc, line)
        parameters = definition.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        if not isinstance(properties, dict) or not properties:
            continue
        total += prop_init
        for key, schema in properties.items():
            total += prop_key
            if not isinstance(schema, dict):
                total += _text(enc, f"{key}::")
                continue
            kind = schema.get("type")
            enum = schema.get("enum")
            if isinstance(enum, list):
                total += enum_init
                for item in enum:
                    scalar = isinstance(item, str | int | float) and not isinstance(item, bool)
                    total += enum_item + (_text(enc, str(item)) if scalar else 0)
            kind_text = kind if isinstance(kind, str) else ""
            total += _text(enc, f"{key}:{kind_text}:{_strip_period(schema.get('description'))}")
    return total


def _inputs(enc: tiktoken.Encoding, value: object) -> int:
    """A prompt or embedding input: str, list[str], list[int] (tokens) or list[list[int]]."""
    if isinstance(value, str):
        return _text(enc, value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += _text(enc, item)
        elif isinstance(item, list):  # a token array: its length is its count
            total += len(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += 1
    return total


def _chat_tokens(enc: tiktoken.Encoding, messages: object, tools: object, functions: object) -> int:
    return _messages(enc, messages) + _definitions(enc, tools, functions)


def text_size(value: object, depth: int = 6) -> int:
    """Characters of text in a JSON-like value: how long counting it will take.

    Token arrays count as nothing: their count is their length, which costs no encoding. Only
    ``depth`` levels are looked at (chat content is 4 deep), so hostile nesting stays cheap.
    """
    if isinstance(value, str):
        return len(value)
    if depth <= 0:
        return 0
    if isinstance(value, dict):
        return sum(text_size(v, depth - 1) for v in value.values())
    if isinstance(value, list):
        if value and isinstance(value[0], int):
            return 0
        return sum(text_size(v, depth - 1) for v in value)
    return 0


# --- module functions --------------------------------------------------------------------------


def count_text(text: str, model: str) -> int:
    """Tokens in ``text`` for ``model``."""
    return _text(encoding_for(model), text)


def count_chat(messages: object, model: str, tools: object = None, functions: object = None) -> int:
    """Prompt tokens of a chat completion request, as OpenAI bills them.

    Per the OpenAI cookbook: 3 tokens per message, the tokens of every string field (role,
    content, name, tool_call_id ...), 1 more per ``name``, 3 for priming the reply. List content
    counts its text parts and 85 per image; assistant ``tool_calls`` count their function names
    and arguments; ``tools``/``functions`` definitions are approximated (see ``_definitions``).
    Values of the wrong type are ignored, never an error.
    """
    return _chat_tokens(encoding_for(model), messages, tools, functions)


def count_prompt(prompt: object, model: str) -> int:
    """Prompt tokens of a completion: ``prompt`` is str, list[str], list[int] or list[list[int]]."""
    return _inputs(encoding_for(model), prompt)


def count_embedding_input(input: object, model: str) -> int:
    """Tokens of an embeddings ``input`` (same shapes as a completion prompt)."""
    return _inputs(encoding_for(model), input)


async def run_counting(
    count: Callable[P, int],
    size: int,
    offload_chars: int,
    *args: P.args,
    **kwargs: P.kwargs,
) -> int:
    """``count(*args)`` inline for small inputs, in a worker thread from ``offload_chars`` on.

    tiktoken releases the GIL while encoding, so a big prompt counted in a thread does not stall
    the other requests; a small one is cheaper counted inline than handed to a thread.
    """
    if size < offload_chars:
        return count(*args, **kwargs)
    return await asyncio.to_thread(count, *args, **kwargs)


async def count_chat_async(
    messages: object,
    model: str,
    tools: object = None,
    functions: object = None,
    *,
    offload_chars: int = OFFLOAD_CHARS,
) -> int:
    """:func:`count_chat`, in a worker thread when the text is large."""
    size = text_size(messages)
    return await run_counting(count_chat, size, offload_chars, messages, model, tools, functions)


async def count_prompt_async(
    prompt: object, model: str, *, offload_chars: int = OFFLOAD_CHARS
) -> int:
    """:func:`count_prompt` (or :func:`count_embedding_input`), in a thread when it is large."""
    return await run_counting(count_prompt, text_size(prompt), offload_chars, prompt, model)


count_embedding_input_async = count_prompt_async


@functools.lru_cache(maxsize=4)
def _filler_words(encoding_name: str) -> tuple[str, ...]:
    # Checked once per encoding, so a tiktoken change cannot silently break exact lengths.
    enc = get_encoding(encoding_name)
    bad = [w for w in FILLER_WORDS if len(enc.encode_ordinary(w)) != 1]
    if bad:
        raise RuntimeError(f"filler words {bad!r} are not single tokens in {encoding_name}")
    return FILLER_WORDS


def exact_pieces(n_tokens: int, model: str) -> list[str]:
    """``n_tokens`` strings, each one token for ``model``; together exactly ``n_tokens`` tokens."""
    words = _filler_words(encoding_name_for(model))
    return list(itertools.islice(itertools.cycle(words), max(n_tokens, 0)))


def encode_exact(n_tokens: int, model: str) -> str:
    """Text that encodes to exactly ``n_tokens`` tokens with ``model``'s encoding (verified)."""
    text = "".join(exact_pieces(n_tokens, model))
    got = len(encoding_for(model).encode_ordinary(text))
    if got != max(n_tokens, 0):
        raise RuntimeError(f"filler text is {got} tokens, not {n_tokens}")
    return text


def token_pieces(text: str, model: str, limit: int | None = None) -> list[str]:
    """``text`` cut at ``model``'s token boundaries, one string per token, first ``limit`` only.

    A token that ends inside a multi-byte character is joined with the next ones until the bytes
    decode, so a piece may hold more than one token; the list is never longer than the tokens.
    """
    enc = encoding_for(model)
    pieces: list[str] = []
    pending = b""
    for token in enc.encode_ordinary(text)[:limit]:
        pending += enc.decode_single_token_bytes(token)
        try:
            pieces.append(pending.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        pending = b""
    if pending:
        pieces.append(pending.decode("utf-8", errors="replace"))
    return pieces


class TokenCounter:
    """Token counting for the gateway: the module functions plus per-model encoding lookup.

    ``offload_chars`` is the text size from which the ``*_async`` methods count in a thread.
    """

    def __init__(self, offload_chars: int = OFFLOAD_CHARS, max_models: int = 1024) -> None:
        self.offload_chars = offload_chars
        self.max_models = max_models
        self.encodings: dict[str, tiktoken.Encoding] = {}

    def encoding(self, model: str) -> tiktoken.Encoding:
        """The encoding for ``model``, remembered per model name."""
        enc = self.encodings.get(model)
        if enc is None:
            if len(self.encodings) >= self.max_models:  # model names come from clients
                self.encodings.clear()
            enc = self.encodings[model] = encoding_for(model)
        return enc

    def count_text(self, text: str, model: str) -> int:
        """Tokens in ``text``."""
        return _text(self.encoding(model), text)

    def count_chat(
        self, messages: object, model: str, tools: object = None, functions: object = None
    ) -> int:
        """See :func:`count_chat`."""
        return _chat_tokens(self.encoding(model), messages, tools, functions)

    def count_prompt(self, prompt: object, model: str) -> int:
        """See :func:`count_prompt`."""
        return _inputs(self.encoding(model), prompt)

    def count_embedding_input(self, input: object, model: str) -> int:
        """See :func:`count_embedding_input`."""
        return _inputs(self.encoding(model), input)

    async def count_chat_async(
        self, messages: object, model: str, tools: object = None, functions: object = None
    ) -> int:
        """:meth:`count_chat`, in a thread when the text is at least ``offload_chars``."""
        size = text_size(messages)
        args = (messages, model, tools, functions)
        return await run_counting(self.count_chat, size, self.offload_chars, *args)

    async def count_prompt_async(self, prompt: object, model: str) -> int:
        """:meth:`count_prompt`, in a thread when the text is at least ``offload_chars``."""
        size = text_size(prompt)
        return await run_counting(self.count_prompt, size, self.offload_chars, prompt, model)

    count_embedding_input_async = count_prompt_async
