"""What an error sent to a client means for its request record (ledger row, access log)."""

from __future__ import annotations

from gateway.errors import ClientGone, GatewayError
from gateway.record import RequestRecord


def note_error(record: RequestRecord, error: GatewayError) -> None:
    """Record why the request ends with ``error`` (unless something already said so)."""
    if record.status == "ok":
        record.status = status_of(error)
    record.error_type = error.code or error.type


def status_of(error: GatewayError) -> str:
    """The ledger's status for a request refused or failed with ``error``."""
    if isinstance(error, ClientGone):
        return "client_disconnect"
    if error.status == 429:
        return "rejected_rate" if error.type == "rate_limit_exceeded" else "rejected_budget"
    if error.status >= 500:
        return "upstream_error"
    if error.status in (401, 403):
        return "unauthorized"
    return "invalid_request"
