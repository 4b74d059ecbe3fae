"""The replication stream scanner: the C scanner, the Python reference and an oracle computed from
the commands themselves agree on random streams split at every byte, and malformed streams fail
at the same offset with the same message."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engram.replication.streamscan import ReferenceScanner, Scan, StreamError, StreamScanner
from engram.valkey.connection import encode
from tests.unit.streams import COMMANDS, SELECT, SINGLE, chunked, stream_of

SCANNERS = [StreamScanner, ReferenceScanner]

@dataclass
class Oracle:
    """The scan expected after any prefix of a stream, from its commands rather than its bytes."""

    commands: list[list[bytes]]
    base: int

    def after(self, fed: int) -> tuple[int, int, int]:
        safe, db, data_end, selected, in_multi, end = self.base, 0, self.base, 0, False, self.base
        last_data = self.base
        for command in self.commands:
            end += len(encode(command))
            if end > self.base + fed:
                break
            name = command[0].lower()
            if name == b"multi":
                in_multi = True
            elif name == b"exec":
                in_multi = False
            elif name == b"select":
                selected = int(command[1])
            if name not in (b"ping", b"replconf"):
                last_data = end
            if not in_multi:
                safe, db, data_end = end, selected, last_data
        return safe, db, data_end


def _feed_all(scanner_type: type, base: int, chunks: list[bytes]) -> list[tuple[int, ...] | str]:
    """What each feed returned, or the error that ended the stream."""
    scanner = scanner_type(base)
    out: list[tuple[int, ...] | str] = []
    for chunk in chunks:
        try:
            out.append((*scanner.feed(chunk), scanner.offset))
        except StreamError as exc:
            out.append(str(exc))
            break
    return out


@settings(max_examples=400, deadline=None)
@given(COMMANDS, st.lists(st.integers(0, 10_000), max_size=12), st.integers(0, 2**40))
def test_c_reference_and_oracle_agree_on_random_streams_and_chunkings(
    commands: list[list[bytes]], cuts: list[int], base: int
) -> None:
    data = stream_of(commands)
    oracle = Oracle(commands, base)
    c_scanner, reference = StreamScanner(base), ReferenceScanner(base)
    fed = 0
    for chunk in chunked(data, cuts):
        fed += len(chunk)
        got = c_scanner.feed(chunk)
        assert got == reference.feed(chunk) == oracle.after(fed)
        assert c_scanner.offset == reference.offset == base + fed
    assert c_scanner.safe == base + len(data)  # every generated stream ends outside a transaction


@settings(max_examples=60, deadline=None)
@given(COMMANDS.filter(lambda cs: 0 < len(stream_of(cs)) < 400))
def test_every_split_point_and_byte_by_byte_feeding_give_the_oracles_scan(
    commands: list[list[bytes]],
) -> None:
    data = stream_of(commands)
    oracle = Oracle(commands, 7)
    for split in range(len(data) + 1):
        scanner = StreamScanner(7)
        assert scanner.feed(data[:split]) == oracle.after(split)
        assert scanner.feed(data[split:]) == oracle.after(len(data))
    one_by_one = StreamScanner(7)
    for i in range(len(data)):
        assert one_by_one.feed(data[i : i + 1]) == oracle.after(i + 1)


@settings(max_examples=500, deadline=None)
@given(COMMANDS.filter(lambda cs: len(cs) > 0), st.integers(0, 10_000), st.integers(0, 255),
       st.sampled_from(["replace", "insert", "delete"]), st.lists(st.integers(0, 10_000), max_size=6))
def test_damaged_streams_fail_alike_in_c_and_python(
    commands: list[list[bytes]], where: int, byte: int, how: str, cuts: list[int]
) -> None:
    data = bytearray(stream_of(commands))
    at = where % len(data)
    if how == "replace":
        data[at] = byte
    elif how == "insert":
        data.insert(at, byte)
    else:
        del data[at]
    chunks = chunked(bytes(data), cuts)
    assert _feed_all(StreamScanner, 3, chunks) == _feed_all(ReferenceScanner, 3, chunks)


# Commands the scanner must refuse, or accept only in the right order.
ODD = st.sampled_from([
    [b"SELECT"], [b"SELECT", b""], [b"SELECT", b"x"], [b"SELECT", b"1", b"2"], [b"select", b"1234567890"],
    [b"SELECT", b"+1"], [b"SELECT", b" 1"], [b"MULTI"], [b"EXEC"], [b"multi"], [b"exec"],
])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(SINGLE, ODD, SELECT), min_size=1, max_size=12),
       st.lists(st.integers(0, 10_000), max_size=6))
def test_odd_command_sequences_fail_alike_in_c_and_python(
    commands: list[list[bytes]], cuts: list[int]
) -> None:
    chunks = chunked(stream_of(commands), cuts)
    assert _feed_all(StreamScanner, 0, chunks) == _feed_all(ReferenceScanner, 0, chunks)


def test_scan_marks_safe_places_the_database_and_the_end_of_data() -> None:
    select = encode([b"SELECT", b"5"])
    set_ = encode([b"SET", b"k", b"*1\r\n$4\r\nEXEC\r\n"])
    ping = encode([b"PING"])
    getack = encode([b"REPLCONF", b"GETACK", b"*"])
    multi, exec_ = encode([b"MULTI"]), encode([b"EXEC"])
    for make in SCANNERS:
        scanner = make(100)
        assert scanner.feed(b"") == (100, 0, 100)
        end = 100 + len(select + set_)
        assert scanner.feed(select + set_) == (end, 5, end)
        # Link-only commands move the safe place, not the end of the data.
        assert scanner.feed(ping + getack) == (end + len(ping + getack), 5, end)
        tx_start = end + len(ping + getack)
        scanner.feed(multi + set_ + set_[:3])
        # Inside a transaction nothing moves: the scan describes the stream up to its safe place.
        assert scanner.feed(set_[3:]) == (tx_start, 5, end)
        assert scanner.in_multi
        tx_end = tx_start + len(multi + set_ * 2 + exec_)
        assert scanner.feed(exec_) == Scan((tx_end, 5, tx_end))
        assert scanner.offset == tx_end and not scanner.in_multi


def test_a_select_inside_a_transaction_counts_from_its_exec() -> None:
    multi, exec_, select = encode([b"MULTI"]), encode([b"EXEC"]), encode([b"SELECT", b"2"])
    for make in SCANNERS:
        scanner = make()
        assert scanner.feed(multi + select) == (0, 0, 0)
        assert scanner.feed(exec_).db == 2


def test_a_huge_argument_is_skipped_by_length_without_being_kept() -> None:
    header = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" + str(10**12).encode() + b"\r\n"
    scanner = StreamScanner()
    assert scanner.feed(header) == (0, 0, 0)
    for _ in range(100):
        scanner.feed(bytes(1 << 20))
    assert scanner.offset == len(header) + 100 * (1 << 20)


def test_any_bytes_like_object_can_be_fed() -> None:
    ping = encode([b"PING"])
    assert StreamScanner().feed(bytearray(ping)) == (len(ping), 0, 0)
    assert StreamScanner().feed(memoryview(ping)) == (len(ping), 0, 0)
    with pytest.raises(TypeError):
        StreamScanner().feed("PING")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StreamScanner(-1)


BAD_SELECT = "SELECT needs exactly one database number of at most 9 digits"


@pytest.mark.parametrize("make", SCANNERS)
@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"+OK\r\n", "offset 10: expected '*' starting a command array, got byte 0x2b"),
        (b"\n", "offset 10: expected '*' starting a command array, got byte 0x0a"),
        (b"*1\r\n:1\r\n", "offset 14: expected '$' starting a bulk string, got byte 0x3a"),
        (b"*x\r\n", "offset 11: malformed array length, got byte 0x78"),
        (b"*\r\n", "offset 11: malformed array length, got byte 0x0d"),
        (b"*-1\r\n", "offset 11: malformed array length, got byte 0x2d"),
        (b"*1\r\r", "offset 13: malformed array length, got byte 0x0d"),
        (b"*0\r\n", "offset 13: empty command array"),
        (b"*" + b"1" * 19 + b"\r\n", "offset 29: array length of more than 18 digits"),
        (b"*1\r\n$-1\r\n", "offset 15: malformed bulk length, got byte 0x2d"),
        (b"*1\r\n$" + b"9" * 19, "offset 33: bulk length of more than 18 digits"),
        (b"*1\r\n$3\r\nSETX\r\n", "offset 21: bulk string not followed by CRLF, got byte 0x58"),
        (b"*1\r\n$3\r\nSET\rX", "offset 22: bulk string not followed by CRLF, got byte 0x58"),
        (encode([b"SELECT"]), f"offset 25: {BAD_SELECT}"),
        (encode([b"SELECT", b"x"]), f"offset 32: {BAD_SELECT}"),
        (encode([b"SELECT", b"-1"]), f"offset 33: {BAD_SELECT}"),
        (encode([b"SELECT", b"1234567890"]), f"offset 42: {BAD_SELECT}"),
        (encode([b"SELECT", b"1", b"2"]), f"offset 39: {BAD_SELECT}"),
        (encode([b"SELECT", b""]), f"offset 31: {BAD_SELECT}"),
        (encode([b"SELECT", b"1"]) + encode([b"SELECT"]), f"offset 48: {BAD_SELECT}"),
        (encode([b"MULTI"]) * 2, "offset 39: MULTI inside MULTI"),
        (encode([b"EXEC"]), "offset 23: EXEC without MULTI"),
    ],
)
def test_malformed_streams_fail_at_the_offending_byte_and_stay_failed(
    make: type, stream: bytes, message: str
) -> None:
    scanner = make(10)
    with pytest.raises(StreamError) as failed:
        for i in range(len(stream)):  # byte by byte: the error does not depend on chunking
            scanner.feed(stream[i : i + 1])
    assert str(failed.value) == message
    assert isinstance(failed.value, ValueError)
    with pytest.raises(StreamError, match=message.split(":")[0]):
        scanner.feed(encode([b"PING"]))
