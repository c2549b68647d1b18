"""What the simulated model answers: request validation, JSON bodies and SSE events.

Token rules: a choice has exactly ``max_completion_tokens``, else ``max_tokens``, else
:data:`DEFAULT_COMPLETION_TOKENS` tokens of filler words (``finish_reason`` "length" when the limit
came from the request, "stop" otherwise). For legacy completions the default is also 64, not
OpenAI's 16, so both endpoints behave alike. With a fixed ``output`` the text is sent as is, cut at
the request's limit if it is longer ("length"). Prompt tokens are counted with ``gateway.tokens``
exactly as the gateway counts them, so budgets can be checked to the token.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import math
import secrets
import struct
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass

import orjson

from gateway import tokens
from gateway.errors import InvalidRequest
from gateway.providers.base import Endpoint, Usage
from gateway.sim.config import SimConfig

DEFAULT_COMPLETION_TOKENS = 64
MAX_COMPLETION_TOKENS = 1_000_000
MAX_CHOICES = 128
DEFAULT_DIMENSIONS = 16
MAX_DIMENSIONS = 8192
SYSTEM_FINGERPRINT = "fp_tollgate_sim"
DONE = b"data: [DONE]\n\n"


def _usage(prompt: int, completion: int, *, details: bool) -> dict[str, object]:
    usage: dict[str, object] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if details:  # chat answers carry these; Usage.from_openai reads cached_tokens
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": 0}
    return usage


@dataclass(frozen=True, slots=True)
class Generation:
    """A chat or text completion to produce: ``choices`` times the same ``pieces``."""

    endpoint: Endpoint
    model: str
    choices: int
    pieces: Sequence[str]  # one token each (a multi-byte character may join tokens)
    tokens_per_choice: int
    finish_reason: str
    prompt_tokens: int
    stream: bool
    include_usage: bool

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.choices * self.tokens_per_choice)

    def _usage_dict(self) -> dict[str, object]:
        completion = self.choices * self.tokens_per_choice
        return _usage(self.prompt_tokens, completion, details=self.endpoint is Endpoint.CHAT)

    def latency_s(self, config: SimConfig) -> float:
        """Time to the last token, which a non-streamed answer waits for."""
        rest = self.tokens_per_choice - 1
        per_token = 1 / config.tokens_per_s if config.tokens_per_s > 0 and rest > 0 else 0.0
        return config.ttft_ms / 1000 + rest * per_token

    def _head(self, obj: str) -> dict[str, object]:
        prefix = "chatcmpl-sim-" if self.endpoint is Endpoint.CHAT else "cmpl-sim-"
        return {
            "id": prefix + secrets.token_hex(12),
            "object": obj,
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def render(self) -> bytes:
        """The non-streamed JSON answer."""
        text = "".join(self.pieces)
        choices: list[dict[str, object]]
        if self.endpoint is Endpoint.CHAT:
            body = self._head("chat.completion")
            message: dict[str, object] = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": [],
            }
            choices = [
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
                for i in range(self.choices)
            ]
        else:
            body = self._head("text_completion")
            choices = [
                {"text": text, "index": i, "logprobs": None, "finish_reason": self.finish_reason}
                for i in range(self.choices)
            ]
        body["choices"] = choices
        body["usage"] = self._usage_dict()
        return orjson.dumps(body)

    async def bursts(self, config: SimConfig) -> AsyncGenerator[list[bytes], None]:
        """The SSE events of the streamed answer, paced by ``config``.

        Yields the events due at each moment together (all of them at once when there is no
        delay between tokens), so a server can write each burst with one syscall.
        """
        chat = self.endpoint is Endpoint.CHAT
        head = self._head("chat.completion.chunk" if chat else "text_completion")
        # Every chunk shares its head; serialise it once and splice each choices list in.
        prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":'
        suffix = b',"usage":null}\n\n' if self.include_usage else b"}\n\n"

        def chunk(index: int, text: str | None, finish: str | None = None) -> bytes:
            choice: dict[str, object]
            if not chat:
                choice = {"text": text or "", "index": index}
            elif text is None:
                choice = {"index": index, "delta": {}}
            else:
                choice = {"index": index, "delta": {"content": text}}
            choice["logprobs"] = None
            choice["finish_reason"] = finish
            return prefix + orjson.dumps([choice]) + suffix

        loop = asyncio.get_running_loop()
        ttft = config.ttft_ms / 1000
        interval = 1 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0
        start = loop.time()
        if ttft > 0:
            await sleep_at_least(ttft)
        burst: list[bytes] = []
        if chat:
            role = {"role": "assistant", "content": "", "refusal": None}
            for c in range(self.choices):
                choice = {"index": c, "delta": role, "logprobs": None, "finish_reason": None}
                burst.append(prefix + orjson.dumps([choice]) + suffix)
        for i, piece in enumerate(self.pieces):
            if i and interval:
                yield burst
                burst = []
                # Paced against the start, so sleep overshoot does not add up over a long answer.
                delay = start + ttft + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            burst.extend(chunk(c, piece) for c in range(self.choices))
        burst.extend(chunk(c, None, self.finish_reason) for c in range(self.choices))
        if self.include_usage:
            burst.append(prefix + b'[],"usage":' + orjson.dumps(self._usage_dict()) + b"}\n\n")
        burst.append(DONE)
        yield burst


@dataclass(frozen=True, slots=True)
class EmbeddingJob:
    """Embeddings to produce: one deterministic unit vector per input."""

    model: str
    inputs: list[str | list[int]]
    dimensions: int
    base64: bool
    prompt_tokens: int

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, 0)

    def latency_s(self, config: SimConfig) -> float:
        return config.ttft_ms / 1000

    def render(self) -> bytes:
        data = []
        for index, item in enumerate(self.inputs):
            packed = unit_vector(item, self.dimensions)
            embedding: object
            if self.base64:
                embedding = base64.b64encode(packed).decode("ascii")
            else:
                embedding = list(struct.unpack(f"<{self.dimensions}f", packed))
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        usage = {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}
        return orjson.dumps({"object": "list", "data": data, "model": self.model, "usage": usage})


async def sleep_at_least(seconds: float) -> None:
    """``asyncio.sleep``, never shorter by the high-resolution clock: the simulated latency is a
    floor that clients may test against. A loop's timer can fire a fraction of a millisecond
    early on that clock (libuv keeps its own in whole milliseconds; seen as a 99.86 ms time to
    first token for 100 ms under a loaded test run), so what is left is slept again."""
    deadline = time.perf_counter() + seconds
    await asyncio.sleep(seconds)
    # A deadline on another clock than the loop's, not an event: nothing could set one.
    while (left := deadline - time.perf_counter()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(left)


def unit_vector(item: str | list[int], dimensions: int) -> bytes:
    """A unit vector drawn from a hash of ``item``, as little-endian float32 (OpenAI's base64)."""
    data = item.encode() if isinstance(item, str) else repr(item).encode()
    raw = struct.unpack(f"<{dimensions}I", hashlib.shake_256(b"sim:" + data).digest(4 * dimensions))
    centred = [x - 2147483647.5 for x in raw]
    norm = math.sqrt(sum(v * v for v in centred)) or 1.0
    return struct.pack(f"<{dimensions}f", *(v / norm for v in centred))


# --- parsing -------------------------------------------------------------------------------------


def _int(body: Mapping[str, object], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise InvalidRequest(
            f"Invalid '{key}': expected an integer from {low} to {high}.", param=key
        )
    return value


def _is_tokens(value: object) -> bool:
    return isinstance(value, list) and all(type(t) is int for t in value)


def _inputs(value: object, key: str) -> list[str | list[int]]:
    """The separate inputs of a prompt or embeddings input, as the API accepts them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if _is_tokens(value):
            return [value]
        if all(_is_tokens(v) and v for v in value):
            return list(value)
    raise InvalidRequest(
        f"'{key}' must be a string, an array of strings, an array of tokens "
        "or an array of token arrays.",
        param=key,
    )


@functools.lru_cache(maxsize=64)
def _output_pieces(output: str, model: str, limit: int | None) -> tuple[tuple[str, ...], int, bool]:
    """The fixed output cut at ``limit`` tokens: (pieces, tokens, whether it was cut)."""
    count = len(tokens.encoding_for(model).encode_ordinary(output))
    cut = limit is not None and count > limit
    if limit is not None and cut:
        count = limit
    return tuple(tokens.token_pieces(output, model, limit=count)), count, cut


async def parse_request(
    endpoint: Endpoint, body: object, config: SimConfig, *, stream: bool | None = None
) -> Generation | EmbeddingJob:
    """Validate an OpenAI request body (JSON bytes or parsed) into the work to do.

    Raises :class:`InvalidRequest` (a 400) for a body the API would refuse.
    """
    if isinstance(body, bytes):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if endpoint is Endpoint.EMBEDDINGS:
        return await _parse_embeddings(body, model)
    if stream is None:
        flag = body.get("stream")
        if flag is not None and not isinstance(flag, bool):
            raise InvalidRequest("Invalid 'stream': expected a boolean.", param="stream")
        stream = bool(flag)
    n = _int(body, "n", 1, MAX_CHOICES) or 1
    if endpoint is Endpoint.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
        if not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("Each message must be an object.", param="messages")
        limit = _int(body, "max_completion_tokens", 1, MAX_COMPLETION_TOKENS)
        if limit is None:
            limit = _int(body, "max_tokens", 1, MAX_COMPLETION_TOKENS)
        functions = body.get("functions")
        prompt_tokens = await tokens.count_chat_async(messages, model, body.get("tools"), functions)
        choices = n
    else:
        prompts = _inputs(body.get("prompt"), "prompt")
        limit = _int(body, "max_tokens", 1, MAX_COMPLETION_TOKENS)
        prompt_tokens = await tokens.count_prompt_async(body["prompt"], model)
        choices = n * len(prompts)  # the API answers every prompt n times
    pieces: Sequence[str]
    if config.output is None:
        count = limit if limit is not None else DEFAULT_COMPLETION_TOKENS
        pieces, finish = tokens.exact_pieces(count, model), ("stop" if limit is None else "length")
    else:
        pieces, count, cut = _output_pieces(config.output, model, limit)
        finish = "length" if cut else "stop"
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return Generation(
        endpoint, model, choices, pieces, count, finish, prompt_tokens, stream, include_usage
    )


async def _parse_embeddings(body: Mapping[str, object], model: str) -> EmbeddingJob:
    inputs = _inputs(body.get("input"), "input")
    dimensions = _int(body, "dimensions", 1, MAX_DIMENSIONS) or DEFAULT_DIMENSIONS
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise InvalidRequest(
            "Invalid 'encoding_format': expected 'float' or 'base64'.", param="encoding_format"
        )
    prompt_tokens = await tokens.count_embedding_input_async(body["input"], model)
    return EmbeddingJob(model, inputs, dimensions, encoding_format == "base64", prompt_tokens)
