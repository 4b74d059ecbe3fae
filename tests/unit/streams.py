"""Random replication streams for the scanner's and the committer's tests: commands whose values
look like RESP or like the commands the scanner tells apart, transactions, SELECT, link-only."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from engram.valkey.connection import encode

# Values that look like RESP, or like the commands the scanner looks for, must stay values.
TRICKY = [
    b"*1\r\n$4\r\nEXEC\r\n", b"*1\r\n$5\r\nMULTI\r\n", b"*2\r\n$6\r\nSELECT\r\n$1\r\n9\r\n",
    b"$4\r\nPING\r\n", b"\r\n", b"*", b"$", b"$-1\r\n", b"\r", b"\n", b"EXEC", b"multi", b"SELECT",
    b"REPLCONF", b"ping",
]
VALUES = st.one_of(st.binary(max_size=24), st.sampled_from(TRICKY))
# Names that are, or nearly are, the ones the scanner tells apart.
NAMES = [b"SET", b"set", b"DEL", b"INCR", b"EXECUTE", b"MULTIPLE", b"PINGS", b"REPLCONFS", b"SELECTED",
         b"EXE", b"MULT", b"", b"X" * 9, b"LPUSH"]
LINK = st.one_of(
    st.just([b"PING"]), st.just([b"ping"]), st.just([b"REPLCONF", b"GETACK", b"*"]),
    st.builds(lambda v: [b"PiNg", v], VALUES),
)
SELECT = st.builds(lambda n, name: [name, str(n).encode()], st.integers(0, 999_999_999),
                   st.sampled_from([b"SELECT", b"select", b"SeLeCt"]))
PLAIN = st.builds(lambda name, args: [name, *args], st.sampled_from(NAMES), st.lists(VALUES, max_size=3))
SINGLE = st.one_of(PLAIN, PLAIN, LINK, SELECT)
TX = st.builds(lambda body, multi, exec_: [[multi], *body, [exec_]], st.lists(SINGLE, max_size=4),
               st.sampled_from([b"MULTI", b"multi"]), st.sampled_from([b"EXEC", b"exec"]))
COMMANDS = st.lists(st.one_of(SINGLE.map(lambda c: [c]), TX), max_size=12).map(
    lambda items: [command for item in items for command in item]
)


def stream_of(commands: list[list[bytes]]) -> bytes:
    return b"".join(encode(command) for command in commands)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """data split at the given places (taken modulo its length)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def is_link_only(command: list[bytes]) -> bool:
    return command[0].lower() in (b"ping", b"replconf")
