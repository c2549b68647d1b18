"""RESP2 for the lean script client (``gateway/redis_scripts/resp.py``): the reply parser over
every way a stream can be cut, and arguments encoded byte for byte as redis-py encodes them."""

from __future__ import annotations

import pytest
from redis.connection import Connection
from redis.exceptions import (
    AuthenticationError,
    DataError,
    InvalidResponse,
    NoScriptError,
    ResponseError,
)

from gateway.redis_scripts import Address, ReplyParser
from gateway.redis_scripts.resp import bulk, command, pack

# One of each reply type, and what it parses to.
REPLIES: list[tuple[bytes, object]] = [
    (b"+OK\r\n", b"OK"),
    (b":42\r\n", 42),
    (b":-7\r\n", -7),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # CRLF inside a bulk string is data
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n$-1\r\n$2\r\nhi\r\n", [1, None, b"hi"]),
    (b"*2\r\n*2\r\n:1\r\n*1\r\n+x\r\n$1\r\ny\r\n", [[1, [b"x"]], b"y"]),
]
STREAM = b"".join(wire for wire, _ in REPLIES)
EXPECTED = [value for _, value in REPLIES]


@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_each_reply_type_parses_from_one_read(wire: bytes, value: object) -> None:
    parser = ReplyParser()
    assert parser.feed(wire) == [value]
    assert parser.pending_bytes == 0


def test_several_replies_in_one_read_come_out_in_order() -> None:
    assert ReplyParser().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_replies_cut_into_reads_of_any_size_parse_the_same(size: int) -> None:
    parser = ReplyParser()
    found = []
    for at in range(0, len(STREAM), size):
        found += parser.feed(STREAM[at : at + size])
    assert found == EXPECTED
    assert parser.pending_bytes == 0


def test_every_cut_point_of_a_nested_reply_waits_for_the_rest() -> None:
    wire = b"*2\r\n$3\r\nabc\r\n*2\r\n:5\r\n$-1\r\n"
    for cut in range(1, len(wire)):
        parser = ReplyParser()
        assert parser.feed(wire[:cut]) == []
        assert parser.feed(wire[cut:]) == [[b"abc", [5, None]]]


def test_an_error_reply_becomes_the_exception_redis_py_raises() -> None:
    [noscript, generic, auth] = ReplyParser().feed(
        b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
        b"-ERR user_script:1: boom\r\n"
        b"-WRONGPASS invalid username-password pair\r\n"
    )
    assert isinstance(noscript, NoScriptError)
    assert str(noscript) == "No matching script. Please use EVAL."
    assert type(generic) is ResponseError and str(generic) == "user_script:1: boom"
    assert isinstance(auth, AuthenticationError)


def test_an_error_inside_an_array_stays_in_it() -> None:
    [reply] = ReplyParser().feed(b"*2\r\n:1\r\n-ERR nested\r\n")
    assert reply[0] == 1 and isinstance(reply[1], ResponseError)


@pytest.mark.parametrize("wire", [b"?what\r\n", b":12x\r\n", b"$3\r\nabcde\r\n"])
def test_bytes_that_are_not_resp2_raise(wire: bytes) -> None:
    with pytest.raises(InvalidResponse):
        ReplyParser().feed(wire)


ARGS: list[object] = [
    "EVALSHA",
    "a" * 40,
    2,
    "tollgate:{team:search}:b:res",
    "clé",  # UTF-8
    b"\x00\xff\r\n",
    0,
    -3,
    10**30,
    1.5,
    0.1,
    1e20,
    1 / 3,
    float("inf"),
    1_767_000_000.123456,
    "",
    b"",
    bytearray(b"ba"),
    memoryview(b"mv"),
]


def test_commands_are_encoded_byte_for_byte_as_redis_py_encodes_them() -> None:
    expected = b"".join(Connection().pack_command(*ARGS))
    assert command(*ARGS) == expected  # type: ignore[arg-type]


def test_a_script_call_encodes_as_redis_py_does_on_either_path() -> None:
    # Plain str/int/float/bytes go through hiredis; a bytearray sends the whole command down the
    # Python path. Both must give redis-py's bytes, after a head that was encoded beforehand.
    plain = [arg for arg in ARGS[2:] if not isinstance(arg, bytearray | memoryview)]
    head = bulk(b"EVALSHA") + bulk(b"a" * 40)
    for args in (plain, [*plain, bytearray(b"ba")]):
        expected = b"".join(Connection().pack_command("EVALSHA", "a" * 40, *args))
        assert pack(head, 2 + len(args), args[:2], args[2:]) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, None, object(), [1]])
def test_arguments_redis_py_refuses_are_refused(value: object) -> None:
    with pytest.raises(DataError):
        command("EVAL", value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1", Address("127.0.0.1")),
        ("redis://redis.internal:6380/3", Address("redis.internal", 6380, 3)),
        ("redis://:s%40cret@h/0", Address("h", password="s@cret")),
        ("redis://app:pw@h:7000/1", Address("h", 7000, 1, "app", "pw")),
        ("rediss://:pw@h", Address("h", password="pw", tls=True)),
        ("unix:///run/redis.sock", None),
        ("redis+sentinel://h:26379/mymaster", None),
        ("redis://h/0?socket_timeout=1", None),
        ("redis://h/zero", None),
        ("redis://user@h", None),
        ("redis:///0", None),
    ],
)
def test_urls_the_lean_client_takes_and_leaves_to_redis_py(
    url: str, address: Address | None
) -> None:
    assert Address.from_url(url) == address
