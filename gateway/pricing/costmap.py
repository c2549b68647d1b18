"""Per-token prices of cloud models, read from the cost map the litellm package ships.

The map is ``model_prices_and_context_window_backup.json`` inside the installed litellm package.
It is found with :func:`importlib.util.find_spec` and read as JSON: importing litellm itself costs
~2.8 s and ~190 MB, which the gateway only pays when a policy routes to a ``type: litellm``
provider. The file (~3.5 MB) is parsed once, on the first lookup, and only when some deployment
has no explicit price.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from gateway.packages import package_dir

COST_MAP_FILE = "model_prices_and_context_window_backup.json"

# OpenAI-compatible APIs whose host says which litellm provider prices them. Self-hosted servers
# (vLLM, TGI...) are absent on purpose: their models must carry a price of their own, rather than
# borrow whatever some cloud charges for the same weights.
_HOST_PROVIDERS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    (".openai.azure.com", "azure"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gemini"),
    ("api.groq.com", "groq"),
    ("api.together.xyz", "together_ai"),
    ("api.together.ai", "together_ai"),
    ("api.deepseek.com", "deepseek"),
    ("api.mistral.ai", "mistral"),
    ("openrouter.ai", "openrouter"),
    ("api.fireworks.ai", "fireworks_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.x.ai", "xai"),
    ("api.deepinfra.com", "deepinfra"),
    ("api.cerebras.ai", "cerebras"),
)

# Dated snapshots (gpt-4o-2024-08-06, claude-3-5-haiku-20241022) are priced like their family
# when the map has no entry for the date itself.
_DATED_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True, slots=True)
class CostEntry:
    """One model's prices in the cost map, in US dollars per token."""

    key: str  # the cost-map entry that matched
    input_usd_per_token: float
    output_usd_per_token: float
    cached_input_usd_per_token: float | None
    provider: str  # litellm_provider of the entry


def find_cost_map_file() -> Path | None:
    """The cost-map JSON inside the installed litellm package, or ``None`` if it is not there."""
    folder = package_dir("litellm")
    if folder is None:
        return None
    path = folder / COST_MAP_FILE
    return path if path.is_file() else None


def provider_for_host(base_url: str) -> str | None:
    """The litellm provider whose prices apply to an OpenAI-compatible ``base_url``, if known."""
    host = (urlsplit(base_url).hostname or "").lower()
    for suffix, provider in _HOST_PROVIDERS:
        if host == suffix or (suffix.startswith(".") and host.endswith(suffix)):
            return provider
    return None


class CostMap:
    """Lookups in litellm's cost map, parsed lazily once per instance.

    Thread-safe: the first lookup parses the file under a lock; later lookups only read.
    """

    __slots__ = ("_entries", "_lock", "_lower", "_path", "_providers")

    def __init__(self, path: Path | None = None) -> None:
        """``path``: a cost-map file (default: the one the installed litellm package ships)."""
        self._path = path
        self._lock = threading.Lock()
        self._entries: dict[str, CostEntry] | None = None
        self._lower: dict[str, str] = {}
        self._providers: frozenset[str] = frozenset()

    @property
    def path(self) -> Path | None:
        """The file the prices come from, or ``None`` when litellm is not installed."""
        return self._path or find_cost_map_file()

    @property
    def available(self) -> bool:
        """Whether there is a cost map to read at all."""
        return bool(self._load())

    @property
    def providers(self) -> frozenset[str]:
        """Every ``litellm_provider`` named in the map (``openai``, ``anthropic``, ...)."""
        self._load()
        return self._providers

    def __len__(self) -> int:
        return len(self._load())

    def entry(self, key: str) -> CostEntry | None:
        """The entry stored under exactly ``key`` (case-insensitive), if it has token prices."""
        entries = self._load()
        found = entries.get(key)
        if found is None:
            lowered = self._lower.get(key.lower())
            found = entries.get(lowered) if lowered is not None else None
        return found

    def lookup(self, model: str, provider: str | None = None) -> CostEntry | None:
        """The price of ``model`` (the name sent upstream), trying the names litellm would.

        ``provider`` is the litellm provider the deployment is served by, when known; it makes
        ``provider/model`` the first name tried.
        """
        for name in self.candidates(model, provider):
            found = self.entry(name)
            if found is not None:
                return found
        return None

    def candidates(self, model: str, provider: str | None = None) -> list[str]:
        """The names :meth:`lookup` tries, most specific first.

        ``provider/model``; the name as given; the name without a ``provider/`` prefix (only a
        prefix that is a litellm provider: ``meta-llama/...`` is part of a model's name); for an
        OpenAI fine-tune ``ft:BASE:org:suffix:id``, the map's fine-tune price ``ft:BASE`` and
        then BASE itself; finally the name without a dated-snapshot suffix.
        """
        names: list[str] = []

        def add(name: str) -> None:
            if name and name not in names:
                names.append(name)

        if provider:
            add(model if model.startswith(f"{provider}/") else f"{provider}/{model}")
        add(model)
        bare = model
        head, slash, rest = model.partition("/")
        if slash and head in self.providers:
            provider = provider or head
            bare = rest
            add(bare)
        if bare.startswith("ft:"):
            base = bare.split(":")[1]
            add(f"ft:{base}")
            if provider:
                add(f"{provider}/{base}")
            add(base)
            bare = base
        undated = _DATED_SUFFIX.sub("", bare)
        if undated != bare:
            if provider:
                add(f"{provider}/{undated}")
            add(undated)
        return names

    def _load(self) -> dict[str, CostEntry]:
        entries = self._entries
        if entries is not None:
            return entries
        with self._lock:
            if self._entries is None:
                self._entries = self._parse()
            return self._entries

    def _parse(self) -> dict[str, CostEntry]:
        path = self.path
        if path is None or not path.is_file():
            return {}
        raw = orjson.loads(path.read_bytes())
        entries: dict[str, CostEntry] = {}
        providers: set[str] = set()
        for key, info in raw.items():
            if not isinstance(info, dict) or key == "sample_spec":
                continue
            provider = info.get("litellm_provider")
            if isinstance(provider, str):
                providers.add(provider)
            entry = _entry(key, info, provider if isinstance(provider, str) else "")
            if entry is not None:
                entries[key] = entry
                self._lower.setdefault(key.lower(), key)
        self._providers = frozenset(providers)
        return entries


def _entry(key: str, info: dict[str, object], provider: str) -> CostEntry | None:
    # Image, audio and search entries price per image/second/query: not a per-token price.
    input_cost = _number(info.get("input_cost_per_token"))
    output_cost = _number(info.get("output_cost_per_token"))
    if input_cost is None and output_cost is None:
        return None
    return CostEntry(
        key=key,
        input_usd_per_token=input_cost or 0.0,
        output_usd_per_token=output_cost or 0.0,
        cached_input_usd_per_token=_number(info.get("cache_read_input_token_cost")),
        provider=provider,
    )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value >= 0 else None


@functools.cache
def bundled_cost_map() -> CostMap:
    """The process-wide :class:`CostMap` of the installed litellm package (parsed on first use).

    Cached so every policy reload reuses one parsed map instead of reading 3.5 MB again.
    """
    return CostMap()
