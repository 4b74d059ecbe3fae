"""The replication tap against a real Valkey: it pumps the write stream's bytes with their scan, and its
acks release WAIT."""

from __future__ import annotations

import asyncio

import pytest

from engram.replication.streamscan import Scan
from engram.replication.tap import Tap
from engram.valkey.connection import ValkeyConnection, encode
from engram.valkey.process import start_valkey

pytestmark = pytest.mark.integration


def test_tap_streams_writes_from_the_first_one_and_its_ack_releases_wait(short_tmp) -> None:
    async def scenario() -> None:
        socket = f"{short_tmp}/v.sock"
        proc = await start_valkey(socket, str(short_tmp), [])
        try:
            seed = await ValkeyConnection.open(socket)
            await seed.execute("SET", "before", "attach")  # in the snapshot, not the stream
            tap = Tap(socket)
            start = await tap.attach()
            received = bytearray()
            scans: list[Scan] = []

            def on_chunk(data: bytes, scan: Scan) -> None:
                received.extend(data)
                scans.append(scan)
                tap.ack(scan.safe)

            streaming = asyncio.get_running_loop().create_task(tap.stream(on_chunk))
            client = await ValkeyConnection.open(socket)
            assert await client.execute("SET", "k", "v") == b"OK"
            # Valkey only streams to a diskless replica after an ack sent once it is online;
            # an ack sent too early left the first writes stuck until a periodic re-ack.
            assert await client.execute("WAIT", "1", "2000") == 1
            # The stream's own bytes from the attach offset on: SELECT, then the write.
            assert encode([b"SELECT", b"0"]) + encode([b"SET", b"k", b"v"]) in bytes(received)
            assert tap.offset == start + len(received)
            assert scans[-1].safe > start and scans[-1].data_end > start and scans[-1].db == 0
            streaming.cancel()
            tap.close()
        finally:
            proc.kill()

    asyncio.run(asyncio.wait_for(scenario(), 30))
