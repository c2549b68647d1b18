"""What one request did: filled in along the request path, read by the access log (and the ledger).

Never holds prompt or completion text, nor a key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    request_id: str  # the gateway's own, unique: budgets and the ledger are keyed by it
    started: float  # time.perf_counter() when the request arrived
    client_request_id: str | None = None  # the x-request-id the client sent, echoed back
    method: str = ""
    path: str = ""
    team: str | None = None
    key_id: str | None = None
    route: str | None = None
    requested_model: str | None = None
    deployment: str | None = None
    provider: str | None = None
    replica: str | None = None
    status: str = "ok"
    http_status: int = 0
    error_type: str | None = None
    prompt_tokens: int = 0
    body_bytes: int = 0  # the request body's length
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    # The estimate the budget reserved (x-tollgate-cost-usd before the answer is known).
    estimated_cost_usd: float = 0.0
    cache: str | None = None  # hit | miss | bypass, when the route caches
    slo_met: bool | None = None
    # Time to first byte spent in the gateway itself: TTFT minus the time spent waiting on
    # upstreams (for a cache hit, all of it).
    overhead_ms: float | None = None
    attempts: int = 0
    stream: bool = False
    ttft_ms: float | None = None
    total_ms: float | None = None
    end_user: str | None = None
    # The client's x-tollgate-tags (feature=search,env=prod), for the ledger.
    tags: dict[str, str] = field(default_factory=dict)
    replica_name: str = ""  # this gateway process
    finished: bool = False  # accounted for (ledger, metrics): exactly once
    extra: dict[str, Any] = field(default_factory=dict)

    def as_log(self) -> dict[str, Any]:
        """The access-log line's fields (no text, no key; ``started`` is internal)."""
        data = asdict(self)
        del data["started"]
        if not data["extra"]:
            del data["extra"]
        return data
