"""Reproduce a nats-server defect: one refused Nats-Expected-Last-Msg-Id publish wedges an R3 stream.

Three plain nats-server processes (started the way `engram local` starts its journal), one
three-replica file stream, plain nats-py. Seen with nats-server 2.15.1: after the refusal every
later publish to the stream times out (stream info still answers). Engram does not use the
header for that reason (docs/durability.md). Run: .venv/bin/python scripts/repro_nats_expected_last_msg_id.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import nats
from nats.js import api

from engram.platforms.local.journal import LocalJournal


async def _step(label: str, publish: object) -> bool:
    started = time.monotonic()
    try:
        ack = await publish  # type: ignore[misc]
    except Exception as exc:
        print(f"{label}: {type(exc).__name__} {getattr(exc, 'description', '')} after "
              f"{time.monotonic() - started:.1f}s")
        return False
    print(f"{label}: stored at seq {ack.seq}")
    return True


async def _scenario(urls: list[str]) -> bool:
    nc = await nats.connect(servers=urls)
    js = nc.jetstream(timeout=5)
    config = api.StreamConfig(name="R", subjects=["r"], num_replicas=3, storage=api.StorageType.FILE)
    await js.add_stream(config)
    await asyncio.sleep(1)  # the stream's Raft group elects its leader
    await _step("first publish", js.publish("r", b"1", headers={"Nats-Msg-Id": "a"}))
    await _step("publish expecting last id 'zzz' (refused, as it should be)",
                js.publish("r", b"2", headers={"Nats-Msg-Id": "b", "Nats-Expected-Last-Msg-Id": "zzz"}))
    after = js.publish("r", b"3", headers={"Nats-Msg-Id": "c"})
    healthy = await _step("plain publish after the refusal", after)
    await nc.close()
    return healthy


def main() -> int:
    journal = LocalJournal(Path(tempfile.mkdtemp(prefix="eg-repro-", dir="/tmp")) / "journal")
    journal.start()
    try:
        healthy = asyncio.run(_scenario(journal.urls))
    finally:
        journal.stop()
    verdict = "DEFECT: the stream takes no publish after one refused last-msg-id check"
    print("stream healthy" if healthy else verdict)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
