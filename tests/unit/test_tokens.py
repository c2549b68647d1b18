"""Token counting: pinned to the counts the OpenAI cookbook reports the API billing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from gateway import tokens

# "How to count tokens with tiktoken" (OpenAI cookbook), section 6: the API billed 129 prompt
# tokens for this conversation on gpt-3.5-turbo / gpt-4 and 124 on gpt-4o / gpt-4o-mini.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

# Section 7 of the same notebook: with this tool the API billed 105 (gpt-3.5-turbo, gpt-4) and
# 101 (gpt-4o, gpt-4o-mini) prompt tokens.
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4", 129),
        ("gpt-4-0613", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
        ("openai/gpt-4o-mini", 124),
    ],
)
def test_chat_count_matches_the_cookbook(model: str, expected: int) -> None:
    assert tokens.count_chat(COOKBOOK_MESSAGES, model) == expected
    assert tokens.TokenCounter().count_chat(COOKBOOK_MESSAGES, model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_tool_definitions_match_the_cookbook(model: str, expected: int) -> None:
    assert tokens.count_chat(COOKBOOK_TOOL_MESSAGES, model, tools=COOKBOOK_TOOLS) == expected
    # The legacy ``functions`` parameter carries the same definitions without the wrapper.
    functions = [tool["function"] for tool in COOKBOOK_TOOLS]
    assert tokens.count_chat(COOKBOOK_TOOL_MESSAGES, model, functions=functions) == expected


def test_plain_text() -> None:
    assert tokens.count_text("tiktoken is great!", "gpt-4") == 6
    assert tokens.count_text("", "gpt-4o") == 0
    # Special-token text in a prompt is ordinary text, not an error.
    assert tokens.count_text("<|endoftext|>", "gpt-4") > 1


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("azure/gpt-4o", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("openai/ft:gpt-4o-mini:acme", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("GPT-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("ft:gpt-3.5-turbo:acme", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("llama-3.1-8b", "cl100k_base"),
        ("anthropic/claude-3-5-sonnet", "cl100k_base"),
        ("sim-chat", "cl100k_base"),
        ("", "cl100k_base"),
    ],
)
def test_model_to_encoding(model: str, encoding: str) -> None:
    assert tokens.encoding_name_for(model) == encoding
    assert tokens.TokenCounter().encoding(model).name == encoding


def test_content_parts_tool_calls_and_odd_values() -> None:
    model = "gpt-4o"
    text = tokens.count_text
    base = tokens.count_chat([{"role": "user", "content": ""}], model)
    parts = [
        {"type": "text", "text": "describe this"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    with_parts = tokens.count_chat([{"role": "user", "content": parts}], model)
    assert with_parts == base + text("describe this", model) + 2 * tokens.IMAGE_TOKENS

    call: dict[str, object] = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    with_call = tokens.count_chat(
        [{"role": "assistant", "content": "", "tool_calls": [call]}], model
    )
    expected = (
        text("assistant", model) + text("get_weather", model) + text('{"city": "Paris"}', model)
    )
    assert with_call == base - text("user", model) + expected

    # Wrong types are ignored, never an error.
    odd: list[object] = [
        None,
        "text",
        {"role": "user", "content": None},
        {"role": 3, "content": {"a": 1}, "name": ["x"], "tool_calls": "nope"},
        {"role": "user", "content": [None, 3, {"type": "text", "text": 5}]},
    ]
    assert tokens.count_chat(odd, model) == tokens.REPLY_PRIMING + 3 * tokens.TOKENS_PER_MESSAGE + 2
    assert tokens.count_chat("not a list", model) == tokens.REPLY_PRIMING
    assert tokens.count_chat([], model, tools=[None, {"function": "x"}], functions=7) == 3
    bad_tool = [{"type": "function", "function": {"name": 1, "parameters": {"properties": []}}}]
    assert tokens.count_chat([], model, tools=bad_tool) > 3


def test_prompt_and_embedding_input_shapes() -> None:
    model = "gpt-3.5-turbo-instruct"
    one = tokens.count_text("Say this is a test", model)
    assert tokens.count_prompt("Say this is a test", model) == one
    assert tokens.count_prompt(["Say this is a test", "Say this is a test"], model) == 2 * one
    assert tokens.count_prompt([1, 2, 3, 4], model) == 4  # token arrays count as their length
    assert tokens.count_prompt([[1, 2], [3, 4, 5]], model) == 5
    assert tokens.count_prompt([], model) == 0
    assert tokens.count_prompt(None, model) == 0
    assert tokens.count_prompt(["a", None, True, {"x": 1}], model) == 1
    assert tokens.count_embedding_input(
        ["Say this is a test", [7, 8]], "text-embedding-3-small"
    ) == (one + 2)


class _ThreadRecorder(tokens.TokenCounter):
    def __init__(self, offload_chars: int) -> None:
        super().__init__(offload_chars=offload_chars)
        self.threads: list[int] = []

    def count_prompt(self, prompt: object, model: str) -> int:
        self.threads.append(threading.get_ident())
        return super().count_prompt(prompt, model)


async def test_big_prompts_are_counted_off_the_event_loop() -> None:
    model = "gpt-4o"
    prompt = tokens.encode_exact(100_000, model)
    assert len(prompt) > tokens.OFFLOAD_CHARS

    counter = _ThreadRecorder(offload_chars=tokens.OFFLOAD_CHARS)
    assert await counter.count_prompt_async(prompt, model) == 100_000
    assert await counter.count_prompt_async("small", model) == 1
    loop_thread = threading.get_ident()
    assert counter.threads[0] != loop_thread  # the big one went to a worker thread
    assert counter.threads[1] == loop_thread  # the small one was counted inline

    messages = [{"role": "user", "content": prompt}]
    sync = tokens.count_chat(messages, model)
    assert sync == 100_000 + tokens.count_chat([{"role": "user", "content": ""}], model)
    assert await tokens.count_chat_async(messages, model) == sync
    assert await tokens.count_chat_async(messages, model, offload_chars=10**9) == sync
    assert await counter.count_chat_async(messages, model) == sync
    assert await tokens.count_prompt_async(prompt, model) == 100_000
    assert await tokens.count_embedding_input_async([prompt, [1, 2]], model) == 100_002


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o", "sim"])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 64, 1000])
def test_encode_exact(model: str, n: int) -> None:
    text = tokens.encode_exact(n, model)
    assert len(tokens.encoding_for(model).encode(text)) == n
    pieces = tokens.exact_pieces(n, model)
    assert "".join(pieces) == text
    assert all(tokens.count_text(piece, model) == 1 for piece in pieces)


def test_token_pieces_keep_multibyte_characters_whole() -> None:
    text = "naïve café 🙂 — 東京"
    for model in ("gpt-4", "gpt-4o"):
        pieces = tokens.token_pieces(text, model)
        assert "".join(pieces) == text
        assert len(pieces) <= tokens.count_text(text, model)
        assert len(tokens.token_pieces(text, model, limit=3)) <= 3


_OFFLINE_CHECK = textwrap.dedent(
    """
    import os, socket, sys

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    socket.socket.connect = no_network
    socket.create_connection = no_network

    from gateway import tokens

    assert "TIKTOKEN_CACHE_DIR" not in os.environ  # set lazily, not at import
    assert tokens.count_text("tiktoken is great!", "gpt-4") == 6
    assert tokens.count_text("tiktoken is great!", "gpt-4o") == 6
    assert "litellm" not in sys.modules  # found, never imported
    print(os.environ["TIKTOKEN_CACHE_DIR"])
    """
)


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
    }
    env["TMPDIR"] = str(tmp_path)  # an empty default tiktoken cache
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"
    return env


def test_counting_works_offline_from_litellms_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_CHECK],
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    bundled = tokens.bundled_tiktoken_dir()
    assert bundled is not None
    assert Path(result.stdout.strip()) == bundled
    assert not any(tmp_path.iterdir())  # nothing was downloaded or cached


def test_a_cache_dir_the_user_set_is_kept(tmp_path: Path) -> None:
    bundled = tokens.bundled_tiktoken_dir()
    assert bundled is not None
    own = tmp_path / "own-cache"
    own.mkdir()
    for file in bundled.iterdir():
        if file.is_file() and len(file.name) == 40:  # tiktoken's sha1-named files
            (own / file.name).write_bytes(file.read_bytes())
    env = _offline_env(tmp_path) | {"TIKTOKEN_CACHE_DIR": str(own)}
    check = _OFFLINE_CHECK.replace('assert "TIKTOKEN_CACHE_DIR" not in os.environ', "pass")
    result = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == own


# Text of every kind tokenizers trip on: special-token text, code, runs of whitespace, numbers,
# accents, CJK, emoji, and bytes that are not valid UTF-8 on their own.
_SAMPLES = [
    "tiktoken is great!",
    "<|endoftext|> and <|im_start|> are plain text here",
    "def f(x):\n\treturn x ** 2  # squared\n\n\n",
    "   leading, trailing and    inner   spaces   ",
    "3.14159 12345678901234567890 1,000,000 0x1F",
    "naïve café — Ünïcödé — 東京タワー — 🙂🚀👩‍👩‍👧",
    "".join(chr(c) for c in range(32, 0x2FF)),
]


@pytest.mark.parametrize("name", [tokens.CL100K, tokens.O200K])
def test_the_loaded_encodings_tokenize_as_tiktokens_own(name: str) -> None:
    # The gateway empties the Python copy of the vocabulary tiktoken keeps after loading (it is
    # only there for pickling): the tokenizer itself must be untouched. The reference is built
    # straight from tiktoken's constructor, with its full dict, outside the registry.
    from tiktoken import Encoding
    from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS

    ours = tokens.get_encoding(name)
    reference = Encoding(**ENCODING_CONSTRUCTORS[name]())
    assert ours.token_byte_values() == reference.token_byte_values()  # every token, in order
    assert ours.n_vocab == reference.n_vocab
    for text in _SAMPLES:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
        assert ours.encode(text, allowed_special="all") == reference.encode(
            text, allowed_special="all"
        )
        assert ours.decode(ours.encode_ordinary(text)) == text


_LAZY_CHECK = textwrap.dedent(
    """
    import pickle, sys
    import tiktoken.registry
    from gateway import tokens

    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) / 1024

    assert not tiktoken.registry.ENCODINGS  # nothing loaded at import
    counter = tokens.TokenCounter()
    before = rss_mb()
    assert counter.count_text("tiktoken is great!", "gpt-4o") == 6
    grown = rss_mb() - before
    assert counter.count_text("tiktoken is great!", "openai/gpt-4o-mini") == 6
    # Only the encoding the models in use need, and one object for the whole process.
    assert sorted(tiktoken.registry.ENCODINGS) == ["o200k_base"]
    enc = counter.encoding("gpt-4o")
    assert counter.encoding("openai/gpt-4o-mini") is enc
    assert tokens.get_encoding("o200k_base") is enc is tiktoken.get_encoding("o200k_base")
    # Registered encodings pickle by name, so emptying the Python vocabulary loses nothing.
    copy = pickle.loads(pickle.dumps(enc))
    assert copy.encode_ordinary("tiktoken is great!") == enc.encode_ordinary("tiktoken is great!")
    print(round(grown, 1))
    """
)


def test_encodings_load_on_first_use_once_and_lean(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LAZY_CHECK],
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # o200k_base takes ~45 MB resident once loaded, ~73 MB if tiktoken's Python copy of the
    # vocabulary (200k bytes objects) were kept next to the Rust one.
    assert float(result.stdout) < 62, f"loading o200k_base grew RSS by {result.stdout} MB"
