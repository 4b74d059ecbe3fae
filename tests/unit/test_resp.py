"""RESP framing: requests parsed with their raw spans, reply boundaries, Valkey's error messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engram import resp
from engram.resp import ProtocolError, ReplyScanner, RequestParser


def _parse(*chunks: bytes) -> list[tuple[list[bytes], bytes]]:
    parser = RequestParser()
    out = []
    for chunk in chunks:
        parser.feed(chunk)
        out += parser.parse()
    return out


def test_multibulk_commands_keep_their_raw_bytes() -> None:
    raw = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n"
    assert _parse(raw) == [
        ([b"SET", b"k", b"hello"], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"),
        ([b"PING"], b"*1\r\n$4\r\nPING\r\n"),
    ]


@given(st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=5), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=17))
def test_commands_split_at_any_byte_boundary_parse_the_same(commands: list[list[bytes]], step: int) -> None:
    stream = b"".join(resp.encode_command(c) for c in commands)
    chunks = [stream[i : i + step] for i in range(0, len(stream), step)]
    parsed = _parse(*chunks)
    assert [args for args, _ in parsed] == commands
    assert b"".join(raw for _, raw in parsed) == stream


def test_inline_commands_split_on_spaces_and_honour_quotes() -> None:
    assert _parse(b"PING\r\n")[0][0] == [b"PING"]
    assert _parse(b'SET k "a b\\n"\r\n')[0][0] == [b"SET", b"k", b"a b\n"]
    assert _parse(b"SET k 'x y'\n")[0][0] == [b"SET", b"k", b"x y"]
    assert _parse(b"GET k\r\n")[0][1] == resp.encode_command([b"GET", b"k"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"*1\r\n$abc\r\n", "Protocol error: invalid bulk length"),
        (b"*2\r\n$3\r\nGET\r\n?x\r\n", "Protocol error: expected '$', got '?'"),
        (b"*x\r\n", "Protocol error: invalid multibulk length"),
        (b"*99999999\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\r\n$999999999999\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
        (b'SET k "unterminated\r\n', "Protocol error: unbalanced quotes in request"),
    ],
)
def test_malformed_requests_get_valkeys_messages(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("$", r"\$").replace("?", r"\?")):
        _parse(payload)


def test_an_endless_inline_line_is_refused() -> None:
    with pytest.raises(ProtocolError, match="too big inline request"):
        _parse(b"X" * (resp.MAX_INLINE + 1))


@pytest.mark.parametrize(
    "reply",
    [
        b"+OK\r\n", b"-ERR boom\r\n", b":42\r\n", b"$5\r\nhello\r\n", b"$-1\r\n", b"*-1\r\n",
        b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", b"%1\r\n+k\r\n*2\r\n:1\r\n:2\r\n", b"_\r\n", b"#t\r\n",
        b",1.5\r\n", b"(123\r\n", b"=8\r\ntxt:abcd\r\n", b"~2\r\n+a\r\n+b\r\n",
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n", b"|1\r\n+ttl\r\n:5\r\n+OK\r\n", b"*0\r\n",
    ],
)
def test_reply_scanner_finds_each_reply_end_even_byte_by_byte(reply: bytes) -> None:
    scanner = ReplyScanner()
    found = []
    stream = reply + b"+NEXT\r\n"
    for i in range(len(stream)):
        scanner.feed(stream[i : i + 1])
        found += scanner.replies()
    assert found == [reply, b"+NEXT\r\n"]


def test_first_element_names_the_pubsub_message_kind() -> None:
    assert resp.first_element(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n") == b"message"
    assert resp.first_element(b">3\r\n+subscribe\r\n+c\r\n:1\r\n") == b"subscribe"
    assert resp.first_element(b"*1\r\n:1\r\n") is None


def test_maps_are_flat_arrays_in_resp2() -> None:
    pairs = [(resp.bulk("a"), resp.integer(1))]
    assert resp.mapping(pairs, resp3=True) == b"%1\r\n$1\r\na\r\n:1\r\n"
    assert resp.mapping(pairs, resp3=False) == b"*2\r\n$1\r\na\r\n:1\r\n"
