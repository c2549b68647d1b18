"""A response whose head has arrived, read whole or chunk by chunk, over a pooled connection."""

from __future__ import annotations

import zlib

from gateway.providers.http1_connection import Connection
from gateway.providers.http1_errors import ProtocolError


class Response:
    """A response whose head has arrived: ``read`` it whole or iterate its body chunks.

    The connection goes back to the pool once the body was read to the end; ``close`` before
    that closes the connection. ``headers`` are keyed by lower-case name.
    """

    __slots__ = ("_connection", "_decoder", "_done", "headers", "status")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.status = connection.status
        self.headers = connection.headers
        self._done = False
        encoding = self.headers.get(b"content-encoding")
        self._decoder = None if encoding is None else _decoder(encoding)

    def header(self, name: bytes) -> str | None:
        """One header by lower-case name (the last, if the server repeated it)."""
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    async def read(self) -> bytes:
        """The whole body (decoded if the server compressed it despite ``identity``)."""
        connection = self._connection
        self._done = True
        try:
            body = await connection.read_body()
            if self._decoder is not None:
                body = _decode(self._decoder, body, final=True)
        except BaseException:
            connection.close()
            raise
        connection.release()
        return body

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        while not self._done:
            try:
                data = await connection.next_chunk()
                end = data is None
                if self._decoder is not None:
                    data = _decode(self._decoder, data or b"", final=end)
            except BaseException:
                self._done = True
                connection.close()
                raise
            if end:
                self._done = True
                connection.release()
            if data:
                return data
        raise StopAsyncIteration

    def close(self) -> None:
        """Stop reading: the connection is reused if the response was complete, else closed."""
        if not self._done:
            self._done = True
            self._connection.release()

    def close_after_end(self, grace_s: float) -> None:
        """Stop reading, but keep the connection if the message ends within ``grace_s``.

        Only for a reader that saw the protocol's own end (``[DONE]``): the server is finished,
        only the message's last bytes may be missing.
        """
        if not self._done:
            self._done = True
            self._connection.linger(grace_s)


def _decoder(encoding: bytes) -> zlib._Decompress | None:
    """A decoder for a compressed body; the gateway asks for identity, but not all servers obey.

    gzip and deflate are decoded (as aiohttp did, so such an upstream keeps working); anything
    else fails clearly rather than forwarding bytes the client cannot read.
    """
    name = encoding.strip().lower()
    if name in (b"", b"identity"):
        return None
    if name in (b"gzip", b"x-gzip", b"deflate"):
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    raise ProtocolError(
        f"the upstream sent content-encoding {name.decode('latin-1')!r}, which is not supported"
    )


def _decode(decoder: zlib._Decompress, data: bytes, *, final: bool) -> bytes:
    try:
        out = decoder.decompress(data) if data else b""
        if final:
            out += decoder.flush()
            if not decoder.eof:
                raise ProtocolError("the compressed body was cut short")
    except zlib.error as exc:
        raise ProtocolError(f"the compressed body is corrupt: {exc}") from None
    return out
