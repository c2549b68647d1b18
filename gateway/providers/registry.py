"""Building upstream clients from a policy, and keeping them across reloads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gateway.policy.schema import LiteLLMProvider, OpenAIProvider, Policy, SimProvider
from gateway.providers.base import Upstream
from gateway.providers.litellm_adapter import LiteLLMUpstream
from gateway.providers.openai_compat import OpenAIUpstream
from gateway.providers.sim import SimUpstream

log = logging.getLogger("tollgate.providers")


def build_upstream(name: str, spec: OpenAIProvider | LiteLLMProvider | SimProvider) -> Upstream:
    """The client for one provider entry of the policy."""
    if isinstance(spec, OpenAIProvider):
        return OpenAIUpstream(name, spec)
    if isinstance(spec, LiteLLMProvider):
        return LiteLLMUpstream(name, spec)
    return SimUpstream(name, spec)


class Upstreams:
    """The live upstream clients, by provider name.

    A reload keeps the client (and its warm connection pool) of every provider whose settings did
    not change; clients of changed or removed providers are closed only after ``grace_s``, so
    requests still running on the old policy finish on them.
    """

    def __init__(self, policy: Policy, grace_s: float = 60.0) -> None:
        self.grace_s = grace_s
        self._specs = dict(policy.document.providers)
        self.clients: Mapping[str, Upstream] = {
            name: build_upstream(name, spec) for name, spec in self._specs.items()
        }
        self._retiring: dict[asyncio.Task[None], list[Upstream]] = {}

    def get(self, name: str) -> Upstream:
        return self.clients[name]

    def update(self, policy: Policy) -> None:
        """Swap in clients for a new policy (call from the event loop)."""
        specs = dict(policy.document.providers)
        clients: dict[str, Upstream] = {}
        retired: list[Upstream] = []
        for name, spec in specs.items():
            old = self.clients.get(name)
            if old is not None and self._specs.get(name) == spec:
                clients[name] = old
            else:
                clients[name] = build_upstream(name, spec)
                if old is not None:
                    retired.append(old)
        retired.extend(c for n, c in self.clients.items() if n not in specs)
        self._specs, self.clients = specs, clients
        if retired:
            task = asyncio.get_running_loop().create_task(self._close_later(retired))
            self._retiring[task] = retired
            task.add_done_callback(self._retiring.pop)

    async def _close_later(self, clients: list[Upstream]) -> None:
        await asyncio.sleep(self.grace_s)
        await _close_all(clients)

    async def aclose(self) -> None:
        pending = [client for clients in self._retiring.values() for client in clients]
        for task in list(self._retiring):
            task.cancel()
        await _close_all(pending + list(self.clients.values()))


async def _close_all(clients: list[Upstream]) -> None:
    for client in clients:
        try:
            await client.aclose()
        except Exception as exc:  # one client failing to close must not keep others open
            log.warning("closing upstream %s failed: %s", client.name, type(exc).__name__)
