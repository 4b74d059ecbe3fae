"""Gauges a node samples rather than sets as things happen: snapshot age, journal size and reach, and
the module's commit waits."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from engram import metrics
from engram.journal.client import Journal
from engram.journal.errors import JournalError
from engram.node.datapath import DataPath
from engram.snapshots.record import SnapshotRecord
from engram.snapshots.schedule import SnapshotPolicy

log = logging.getLogger(__name__)

# One stream info request per node this often (the stream leader answers it): cheap, and finer than
# any scrape interval worth having.
JOURNAL_SAMPLE_INTERVAL = 5.0
# ENGRAM.INFO this often: one command to the local Valkey, finer than any scrape worth having.
MODULE_SAMPLE_INTERVAL = 5.0


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


def commit_waits(info: bytes) -> tuple[list[tuple[str, float]], float] | None:
    """ENGRAM.INFO's commit wait histogram as (cumulative buckets in seconds, sum in seconds); None
    from a module that does not report it."""
    fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    if "commit_wait_us_buckets" not in fields:
        return None
    buckets = []
    for bucket in fields["commit_wait_us_buckets"].split(","):
        bound, count = bucket.split("=")
        buckets.append(("+Inf" if bound == "inf" else repr(int(bound) / 1e6), float(count)))
    return buckets, int(fields["commit_wait_us_sum"]) / 1e6


async def watch_module(datapath: DataPath, interval: float = MODULE_SAMPLE_INTERVAL) -> None:
    """Export the module's commit waits (ENGRAM.INFO) every `interval` seconds for as long as the
    node runs."""
    while True:
        try:
            info = await datapath.execute("ENGRAM.INFO")
            sampled = commit_waits(info) if isinstance(info, bytes) else None
        except Exception as exc:  # a metrics sample must never take the node down
            log.debug("module commit waits not read: %r", exc)
        else:
            if sampled is not None:
                metrics.REPLY_COMMIT_WAIT.update(*sampled)
        await asyncio.sleep(interval)
