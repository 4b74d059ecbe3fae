"""Issue 11's sequence on a real cluster with zone networks: the first primary is killed, the journal
server of its zone is killed and restarted, that zone is cut off, and right after the heal the node is
killed again so it restarts while the journal recovers. No second history may start: the shard's
journal holds one genesis entry and ever-growing epochs, and every acknowledged write survives."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engram.journal.client import Journal
from engram.journal.entries import EntryType
from engram.platforms.local import network
from engram.platforms.local.testing import run_engram
from tests.integration.workload import Writers, cli_status, client_for, primary_of, wait_for_new_primary

pytestmark = pytest.mark.integration

WHY_NOT = network.unavailable()


def _local(status: dict, command: str, *args: str) -> None:
    base = str(Path(status["dir"]).parent)
    done = run_engram("local", command, status["name"], *args, "--dir", base, timeout=30)
    assert done.returncode == 0, done.stderr


def _wait_until(what: str, check, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


async def _leadership_history(urls: list[str], cluster: str) -> list[tuple[EntryType, int, str]]:
    journal = await Journal.connect(urls, cluster, 0, replicas=3)
    try:
        last = await journal.last_seq()
        entries = []
        async for entry in journal.tail(1):
            if entry.type in (EntryType.GENESIS, EntryType.LEADER):
                entries.append((entry.type, entry.epoch, entry.node))
            if entry.seq >= last:
                return entries
    finally:
        await journal.close()
    return []


@pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "zone networks available")
@pytest.mark.timeout(300)
def test_a_node_restarted_during_journal_recovery_cannot_start_a_second_history(local_cluster) -> None:
    status = local_cluster(shards=1, replicas=2, lease=1.0, netns=True)
    writers = Writers(status["endpoint"], count=6).start()
    try:
        _wait_until("first acknowledged writes", lambda: len(writers.acked) > 50)
        first = primary_of(cli_status(status))
        zone = first["zone"]
        _local(status, "kill", first["id"])
        wait_for_new_primary(status, first["id"])
        _local(status, "kill", f"journal-{zone}")
        _wait_until("the journal server to restart",
                    lambda: all(j["pid"] for j in cli_status(status)["journal"]))
        _local(status, "partition", zone)
        writers.mark("partition")
        _wait_until("a write acknowledged with the zone cut off",
                    lambda: "partition" in writers.first_ack_after)
        _local(status, "heal", zone)
        # The node restarts while its zone's journal server is still catching up.
        _local(status, "kill", first["id"])
        writers.mark("restart")
        _wait_until("writes after the restart", lambda: "restart" in writers.first_ack_after)
        _wait_until("every node back and applying", lambda: all(
            n["role"] in ("primary", "replica") and n["applied_seq"] for n in cli_status(status)["nodes"]
        ), timeout=60)
    finally:
        writers.stop()
    final = cli_status(status)
    primary = primary_of(final)
    assert writers.missing(client_for(primary, socket_timeout=10)) == []
    urls = [j["url"] for j in final["journal"]]
    history = asyncio.run(asyncio.wait_for(_leadership_history(urls, status["name"]), 60))
    assert history[0][0] is EntryType.GENESIS
    assert [kind for kind, _, _ in history].count(EntryType.GENESIS) == 1
    epochs = [epoch for kind, epoch, _ in history if kind is EntryType.LEADER]
    assert epochs == sorted(set(epochs)) and len(epochs) >= 2, history
