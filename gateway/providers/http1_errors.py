"""The failures of the upstream HTTP/1.1 client (``http1_connection``, ``http1_pool``).

The provider maps them onto :mod:`gateway.errors`: :class:`ConnectError` lets the balancer try the
next replica, :class:`HTTPTimeout` becomes a 504, everything else a broken upstream.
"""

from __future__ import annotations


class HTTPError(Exception):
    """An HTTP exchange with an upstream failed; the message says how."""


class ConnectError(HTTPError):
    """No connection could be opened (refused, unreachable, DNS, TLS handshake)."""


class HTTPTimeout(HTTPError):
    """Connecting, waiting for a pooled connection, the response, or a stream gap took too long."""


class ProtocolError(HTTPError):
    """The upstream broke the exchange: a malformed response, or a connection closed early."""


class ConnectionClosed(ProtocolError):
    """The connection ended before the response was complete.

    ``before_response`` (no byte of the response had arrived) on a reused keep-alive connection
    means the server had closed it while idle: the request can go again on a fresh one.
    """

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response
