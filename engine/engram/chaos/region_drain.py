"""When every region of a multi-region cluster has copied and applied everything the others wrote:
DrainTracker decides it from successive lag readings (pure), wait_drained takes them.

Not "every lag row reads zero in one status": each primary stamps its clock into its journal every
second, besides lease renewals, so on a quiet cluster some link is nearly always an entry or two
behind at any one instant. Instead each link (destination, source, shard) must read nothing to copy
in one reading (the source's last entry, after every write, is in the destination's inbound stream),
and nothing to apply in a later one (the applier's position is past that entry).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from engram.multiregion.inbound import InboundLink, source_state_of
from engram.platforms.local import cluster, multi_region
from engram.platforms.local.regions import region_cluster

# A row whose source has been silent this long says nothing about what is left (NATS's figure may
# be stale): it is skipped, as is a row with an error.
IDLE_LIMIT = 5.0
READ_EVERY = 0.5

# (destination region, source region, shard)
Link = tuple[str, str, int]


def link_name(link: Link, shards: int = 1) -> str:
    to, source, shard = link
    return f"{to}<-{source}" + (f"/{shard}" if shards > 1 else "")


@dataclass
class DrainTracker:
    """Which links have drained, from lag rows (each with "to" added) read one status after another."""

    links: set[Link]
    copied_in: dict[Link, int] = field(default_factory=dict)
    drained: dict[Link, float] = field(default_factory=dict)
    readings: int = 0
    last_rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, regions: tuple[str, ...], shards: int) -> DrainTracker:
        return cls({(to, source, s) for to in regions for source in regions if to != source
                    for s in range(shards)})

    def feed(self, rows: list[dict[str, Any]], seconds: float) -> bool:
        """Take one reading, `seconds` after the wait began; True once every link has drained."""
        self.readings += 1
        self.last_rows = rows
        for row in rows:
            link = (row["to"], row["from"], row["shard"])
            if row["error"] or row["idle"] is None or row["idle"] > IDLE_LIMIT:
                continue
            if link in self.copied_in and self.copied_in[link] < self.readings and row["not_applied"] == 0:
                self.drained.setdefault(link, round(seconds, 1))
            if row["not_copied"] == 0:
                self.copied_in.setdefault(link, self.readings)
        return self.done

    @property
    def done(self) -> bool:
        return self.links <= self.drained.keys()

    def missing(self) -> list[Link]:
        return sorted(self.links - self.drained.keys())


def lag_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every region's lag rows of a multi-region status, each with the region it is about ("to")."""
    return [{**row, "to": region} for region, d in doc["regions"].items() for row in d.get("lag", [])]


def wait_drained(base: str | Path, name: str, regions: tuple[str, ...], shards: int, timeout: float,
                 progress: Callable[[str], None] = lambda _m: None) -> DrainTracker:
    """Read the cluster's status until every link drained or `timeout` passed; the tracker says which."""
    tracker = DrainTracker.of(regions, shards)
    start = time.monotonic()
    while not tracker.done and time.monotonic() - start < timeout:
        try:
            doc = multi_region.status(base, name)
        except cluster.LocalError as exc:  # a region not answering yet: the next reading may
            progress(f"status while waiting for the regions to drain: {exc}")
        else:
            tracker.feed(lag_rows(doc), time.monotonic() - start)
        if not tracker.done:
            time.sleep(READ_EVERY)
    return tracker


def source_idle(base: str | Path, name: str, region: str, source: str, shard: int = 0) -> float:
    """Seconds since `source` last sent anything to `region`'s inbound stream, as NATS tells it in
    the region's own journal (never heard from: infinity). Read directly rather than by status,
    which waits out a frozen region's journal and nodes."""
    state = cluster.load_running(base, region_cluster(name, region))
    link = InboundLink(state.name, shard, source, region_cluster(name, source), region)

    async def ask() -> float:
        nc = await nats.connect(state.journal_urls, connect_timeout=5, allow_reconnect=False,
                                **state.journal_security.connect_options())
        try:
            return source_state_of(await nc.jetstream(timeout=5).stream_info(link.stream), link).idle
        finally:
            await nc.close()

    return asyncio.run(ask())
