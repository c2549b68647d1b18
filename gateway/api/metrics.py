"""GET /metrics: the Prometheus exposition (text format 0.0.4).

Open, without a key, as is conventional for Prometheus targets: it carries counts, latencies and
spend per team and route, never prompts, keys or request ids. Where that is too much, keep the
port off the public network or block ``/metrics`` at the load balancer (the compose file's nginx
only needs to forward ``/v1`` to clients; Prometheus scrapes each replica directly).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.metrics import CONTENT_TYPE, Metrics

router = APIRouter()


def _metrics(request: Request) -> Metrics:
    found: Metrics = request.app.state.services.metrics
    return found


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Every instrument, plus the gauges refreshed from their owners just now."""
    body = await _metrics(request).render()
    return Response(body, media_type=CONTENT_TYPE)
