"""The replication tap against a real Valkey: it receives the write stream and its acks release WAIT."""

from __future__ import annotations

import asyncio

import pytest

from engram.replication.tap import StreamCommand, Tap
from engram.valkey.connection import ValkeyConnection
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
            seen: list[StreamCommand] = []

            def on_commands(commands: list[StreamCommand]) -> None:
                seen.extend(commands)
                tap.ack(commands[-1].end_offset)

            streaming = asyncio.get_running_loop().create_task(tap.stream(on_commands))
            client = await ValkeyConnection.open(socket)
            assert await client.execute("SET", "k", "v") == b"OK"
            # Valkey only streams to a diskless replica after an ack sent once it is online;
            # an ack sent too early left the first writes stuck until a periodic re-ack.
            assert await client.execute("WAIT", "1", "2000") == 1
            writes = [c.args for c in seen if c.args[0].lower() == b"set"]
            assert writes == [[b"SET", b"k", b"v"]]
            assert seen[-1].end_offset > start
            streaming.cancel()
            tap.close()
        finally:
            proc.kill()

    asyncio.run(asyncio.wait_for(scenario(), 30))
