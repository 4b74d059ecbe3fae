"""A node's journal gauges on a real 3-server JetStream cluster: size held, quorum lost and regained."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from engram.journal.client import Journal
from engram.journal.entries import Entry, EntryType
from engram.node.gauges import sample_journal

pytestmark = pytest.mark.integration

CLUSTER_ID = "9a09e5"


async def _reachable_becomes(journal: Journal, value: float, timeout: float) -> None:
    """Sample as the node does until engram_journal_reachable is `value`; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        await sample_journal(journal, 2.0)
        if REGISTRY.get_sample_value("engram_journal_reachable") == value:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"engram_journal_reachable did not become {value} within {timeout:.0f}s")
        await asyncio.sleep(0.2)


def test_journal_gauges_report_the_streams_size_and_its_quorum(nats_journal) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "gauges", 0, replicas=3)
        await journal.create_stream(CLUSTER_ID)
        for i in range(1, 10):
            await journal.append(Entry(EntryType.DATA, 1, "n1", b"x" * 100), i, f"m{i}")
        await sample_journal(journal, 5.0)
        assert REGISTRY.get_sample_value("engram_journal_reachable") == 1.0
        assert REGISTRY.get_sample_value("engram_journal_entries") == 10.0  # genesis and nine entries
        held = REGISTRY.get_sample_value("engram_journal_bytes")
        assert held is not None and held > 9 * 100

        # Two of three servers gone: the stream has no quorum, whichever server still answers.
        for zone in ("b", "c"):
            await asyncio.to_thread(nats_journal.kill, zone)
        await _reachable_becomes(journal, 0.0, 30)
        await asyncio.to_thread(nats_journal.restart, "b")
        await _reachable_becomes(journal, 1.0, 60)
        await journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 150))
