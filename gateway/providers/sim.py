"""The simulated model as an in-process upstream (``type: sim`` in a policy).

It answers like ``tollgate sim`` does (both run :class:`gateway.sim.engine.SimEngine`), without a
socket: the gateway's own test double, the way httpx ships ``MockTransport``.
"""

from __future__ import annotations

from gateway.errors import UpstreamError
from gateway.policy.schema import SimProvider
from gateway.providers.base import UpstreamReply, UpstreamRequest
from gateway.sim.config import SimConfig
from gateway.sim.engine import SimEngine, SimReply, SimStream

REPLICA = "sim"


class SimUpstream:
    """An :class:`gateway.providers.base.Upstream` answered by the simulator in process.

    ``engine`` is public so tests can read its ``stats`` or change its config at run time.
    """

    def __init__(self, name: str, spec: SimProvider, *, seed: int | None = None) -> None:
        self.name = name
        config = SimConfig(
            ttft_ms=spec.ttft_ms,
            tokens_per_s=spec.tokens_per_s,
            error_rate=spec.error_rate,
            output=spec.output,
            seed=seed,
        )
        self.engine = SimEngine(config, replica=REPLICA)

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        """A complete answer; a simulated failure raises a retryable 500 ``UpstreamError``."""
        result = await self.engine.handle(request.endpoint, request.body, stream=False)
        assert isinstance(result, SimReply)  # stream=False never streams
        return _reply(result)

    async def open_stream(self, request: UpstreamRequest) -> SimStream | UpstreamReply:
        """An SSE stream; a 400 comes back as a reply, a simulated failure raises."""
        result = await self.engine.handle(request.endpoint, request.body, stream=True)
        if isinstance(result, SimStream):
            return result
        return _reply(result)

    async def aclose(self) -> None:
        """Nothing to release: no connections."""


def _reply(result: SimReply) -> UpstreamReply:
    if result.status >= 500:
        # As an HTTP upstream answering 5xx is reported: a 502 from the gateway.
        raise UpstreamError(
            f"upstream sim returned {result.status}: simulated upstream failure", retryable=True
        )
    return UpstreamReply(
        status=result.status,
        body=result.body,
        content_type="application/json",
        replica=REPLICA,
        usage=result.usage,
    )
