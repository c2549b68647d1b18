"""RESP2, the part a script runner needs: commands out, replies in.

Arguments are encoded exactly as redis-py encodes them (``Encoder.encode``): bytes as they are,
str as UTF-8, int and float as their ``repr()``; bool and anything else are refused with
:class:`~redis.exceptions.DataError`. Error replies become redis-py's exception classes (its
own ``parse_error``), so code written against redis-py catches the same types.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

from hiredis import pack_command
from redis._parsers.base import BaseParser
from redis.exceptions import DataError, InvalidResponse, RedisError

Arg = str | int | float | bytes
# bytes for simple and bulk strings, int, None for nil, list for arrays, and an exception for
# an error reply (a RedisError: ResponseError mostly, but AuthenticationError for WRONGPASS is a
# ConnectionError); inside an array it stays there, as redis-py leaves it.
Reply = Any

_CRLF = b"\r\n"
# The parser's "not all here yet": a position no reply ends at.
_INCOMPLETE: tuple[None, int] = (None, -1)


def encode_arg(value: Arg | bytearray | memoryview) -> bytes:
    """One argument as redis-py's ``Encoder.encode`` makes it (the uncommon types' path)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool):
        raise DataError(
            "Invalid input of type: 'bool'. Convert to a bytes, string, int or float first."
        )
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, str):
        return value.encode()
    raise DataError(
        f"Invalid input of type: '{type(value).__name__}'. "
        "Convert to a bytes, string, int or float first."
    )


def pack(head: bytes, count: int, *groups: Sequence[Arg]) -> bytes:
    """A command as one buffer: ``count`` arguments, the first ones already encoded in
    ``head`` (``$<len>\\r\\n<arg>\\r\\n`` each), then every value of ``groups``."""
    try:
        # hiredis encodes str/int/float/bytes as redis-py does (UTF-8, repr()) in C: a budget
        # reservation's 20-odd arguments take under half the time of a Python loop over them.
        # It writes its own "*<n>" line first, which the head's count replaces.
        # (hiredis's stub types the tuple as having one item.)
        body = pack_command(tuple(chain.from_iterable(groups)))  # type: ignore[arg-type]
    except TypeError:  # bool, bytearray, None, anything else: redis-py's rules, in Python
        return _pack_each(head, count, groups)
    return b"".join((b"*%d\r\n" % count, head, memoryview(body)[body.index(b"\n") + 1 :]))


def _pack_each(head: bytes, count: int, groups: Sequence[Sequence[Arg]]) -> bytes:
    parts = [b"*%d\r\n" % count, head]
    append = parts.append
    for group in groups:
        for value in group:
            data = encode_arg(value)
            append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def bulk(value: bytes) -> bytes:
    """One already-encoded argument, to go in a :func:`pack` head."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: Arg) -> bytes:
    """A whole command from its arguments (for the handful sent outside the hot path)."""
    return pack(b"", len(args), args)


def error_of(message: bytes) -> RedisError:
    """The exception redis-py raises for an error reply (NOSCRIPT: NoScriptError, ...)."""
    found: RedisError = BaseParser.parse_error(  # type: ignore[no-untyped-call]
        message.decode(errors="replace")
    )
    return found


class ReplyParser:
    """Replies from a byte stream, however it is cut into reads.

    ``feed`` returns every reply completed by the data so far, in order. A reply cut across
    reads is parsed again from its start when the rest arrives: script replies are a few
    hundred bytes, so keeping the parser's place would cost more than it saves.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Reply]:
        """Add ``data``; return the replies now complete. Raises InvalidResponse on bytes
        that are not RESP2 (the stream cannot be trusted after that)."""
        buffer = self._buffer + data if self._buffer else data
        found: list[Reply] = []
        at, end = 0, len(buffer)
        while at < end:
            value, after = _parse(buffer, at)
            if after < 0:
                break
            found.append(value)
            at = after
        self._buffer = buffer[at:] if at < end else b""
        return found

    @property
    def pending_bytes(self) -> int:
        """How many bytes of an incomplete reply are held."""
        return len(self._buffer)


def _parse(buffer: bytes, at: int) -> tuple[Reply, int]:
    """The reply starting at ``at`` and the position after it, or ``_INCOMPLETE``."""
    eol = buffer.find(_CRLF, at)
    if eol < 0:
        return _INCOMPLETE
    kind = buffer[at]
    if kind == 36:  # $ bulk string
        size = _int(buffer, at, eol)
        if size < 0:
            return None, eol + 2
        start = eol + 2
        stop = start + size
        if stop + 2 > len(buffer):
            return _INCOMPLETE
        if buffer[stop : stop + 2] != _CRLF:
            raise InvalidResponse(f"bulk string of {size} bytes not followed by CRLF")
        return buffer[start:stop], stop + 2
    if kind == 58:  # : integer
        return _int(buffer, at, eol), eol + 2
    if kind == 42:  # * array
        size = _int(buffer, at, eol)
        if size < 0:
            return None, eol + 2
        items: list[Reply] = []
        after = eol + 2
        for _ in range(size):
            item, after = _parse(buffer, after)
            if after < 0:
                return _INCOMPLETE
            items.append(item)
        return items, after
    if kind == 43:  # + simple string
        return buffer[at + 1 : eol], eol + 2
    if kind == 45:  # - error
        return error_of(buffer[at + 1 : eol]), eol + 2
    raise InvalidResponse(f"unexpected RESP type byte {bytes([kind])!r}")


def _int(buffer: bytes, at: int, eol: int) -> int:
    try:
        return int(buffer[at + 1 : eol])
    except ValueError:
        raise InvalidResponse(f"not an integer: {buffer[at + 1 : eol]!r}") from None
