"""Tap.stream without a Valkey: chunks go to the callback as they came, with their scans and the
stream offset; a stream the scanner cannot frame fails the tap."""

from __future__ import annotations

import asyncio

import pytest

from engram.replication.streamscan import Scan
from engram.replication.tap import Tap, TapError
from engram.valkey.connection import encode

SET = encode([b"SET", b"k", b"v"])
PING = encode([b"PING"])


def _tap(offset: int, leftover: bytes, chunks: list[bytes]) -> Tap:
    """A tap attached at offset whose link delivers chunks, then closes."""
    tap = Tap("/nonexistent")
    tap.offset, tap._leftover = offset, leftover
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    tap._reader = reader
    return tap


def test_chunks_go_over_raw_with_their_scans_from_the_attach_offset() -> None:
    async def scenario() -> None:
        # Stream bytes that came with the snapshot's end mark are the stream's first bytes.
        tap = _tap(500, SET[:4], [SET[4:] + PING[:2], PING[2:]])
        seen: list[tuple[bytes, Scan, int]] = []
        with pytest.raises(TapError, match="closed the replication link"):
            await tap.stream(lambda data, scan: seen.append((data, scan, tap.offset)))
        assert b"".join(data for data, _, _ in seen) == SET + PING
        assert seen[0] == (SET[:4], (500, 0, 500), 504)
        assert seen[-1][1:] == ((500 + len(SET + PING), 0, 500 + len(SET)), 500 + len(SET + PING))

    asyncio.run(scenario())


def test_a_stream_the_scanner_cannot_frame_fails_the_tap() -> None:
    async def scenario() -> None:
        tap = _tap(0, b"", [SET, b"+OK\r\n"])
        seen: list[bytes] = []
        with pytest.raises(TapError, match=rf"malformed replication stream from valkey: offset {len(SET)}: "
                                           r"expected '\*' starting a command array, got byte 0x2b"):
            await tap.stream(lambda data, scan: seen.append(data))
        assert seen == []  # one read held both: nothing of a chunk that fails is handed over

    asyncio.run(scenario())
