"""One exception tree for everything a client can be told.

::

    GatewayError                      500 api_error
    ├── InvalidRequest                400 invalid_request_error
    │   └── PayloadTooLarge           413 invalid_request_error / request_too_large
    ├── AuthenticationFailed          401 invalid_request_error / invalid_api_key
    ├── PermissionDenied              403 permission_denied
    ├── NotFound                      404 invalid_request_error / model_not_found | not_found
    ├── RateLimited                   429 rate_limit_exceeded
    ├── QuotaExceeded                 429 insufficient_quota
    ├── ServiceUnavailable            503 service_unavailable
    ├── ClientGone                    499 client_disconnect (nobody is left to read it)
    └── UpstreamError                 502 upstream_error (status kept when the upstream gave one)
        ├── UpstreamConnectError      502 upstream_connect_error
        ├── UpstreamTimeout           504 upstream_timeout
        └── UpstreamProtocolError     502 upstream_protocol_error (invalid JSON, cut-off stream)

Each class knows its HTTP status and its OpenAI ``type``/``code``, so the single handler in
``app.py`` renders every error the same way and the openai SDK maps it to the right exception class.
Messages are written for clients: never a stack trace, a key or a secret.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def envelope(self) -> dict[str, object]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_denied"
    code = "route_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class QuotaExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class ClientGone(GatewayError):
    """The client disconnected before its request was read: logged and accounted, not answered."""

    status = 499
    type = "client_disconnect"
    code = "client_disconnect"


class UpstreamError(GatewayError):
    """The upstream failed. ``retryable`` says whether another candidate may be tried."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class PolicyError(Exception):
    """A policy could not be loaded. ``problems`` holds one ``file:line path: message`` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
