"""Gauges a node samples rather than sets as things happen: snapshot age, journal size and reach."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from engram import metrics
from engram.journal.client import Journal
from engram.journal.errors import JournalError
from engram.snapshots.record import SnapshotRecord
from engram.snapshots.schedule import SnapshotPolicy

log = logging.getLogger(__name__)

# One stream info request per node this often (the stream leader answers it): cheap, and finer than
# any scrape interval worth having.
JOURNAL_SAMPLE_INTERVAL = 5.0


def snapshot_age(newest: SnapshotRecord | None, now: float) -> float:
    """Seconds since `newest` was taken; NaN while the shard has none (unknown, not fresh)."""
    if newest is None:
        return math.nan
    # Another host's clock took it: a little skew must not show as an age below zero.
    return max(0.0, now - newest.created_at)


def track_snapshots(newest: Callable[[], SnapshotRecord | None], policy: SnapshotPolicy) -> None:
    """Export the age of what `newest` returns, computed at each scrape, and the schedule it is held to."""
    metrics.SNAPSHOT_AGE.set_function(lambda: snapshot_age(newest(), time.time()))
    metrics.SNAPSHOT_INTERVAL.set(policy.interval)


async def sample_journal(journal: Journal, timeout: float) -> None:
    """Read the shard's stream once: its size, and whether it answered with a leader."""
    try:
        state = await asyncio.wait_for(journal.state(), timeout)
    except (JournalError, TimeoutError) as exc:
        log.debug("journal stream state not read: %r", exc)
        metrics.JOURNAL_REACHABLE.set(0)
        return
    metrics.JOURNAL_REACHABLE.set(1 if state.has_leader else 0)
    metrics.JOURNAL_ENTRIES.set(state.messages)
    metrics.JOURNAL_BYTES.set(state.bytes)


async def watch_journal(journal: Journal, interval: float = JOURNAL_SAMPLE_INTERVAL) -> None:
    """Sample the shard's stream every `interval` seconds for as long as the node runs."""
    while True:
        await sample_journal(journal, interval)
        await asyncio.sleep(interval)
