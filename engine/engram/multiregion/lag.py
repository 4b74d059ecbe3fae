"""How far each region trails the others, per (destination region, source region, shard): origin
entries not copied yet, entries copied and not applied yet, and how long the link has been idle
(docs/multi-region.md, "A local multi-region cluster").

Platform-neutral: the local platform's `engram local status` and the operator's MultiRegionCluster
status both read the figures here, each from journal connections it opens its own way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
from nats.js.client import JetStreamContext

from engram.journal.client import stream_name
from engram.multiregion import holdback
from engram.multiregion.applier import PositionStore, bucket_name
from engram.multiregion.inbound import InboundError, InboundLink, source_state_of

# How long one journal answer is waited for before its figure is reported as unknown.
ASK_TIMEOUT = 3.0


@dataclass(frozen=True)
class InboundView:
    """What one region's journal says about one inbound stream (shard, source region), and what the
    source region's journal says of the origin stream; None where it could not be read."""

    shard: int
    source: str
    origin_last: int | None = None
    # Origin sequence of the inbound stream's last entry (0: it holds none yet).
    copied_through: int | None = None
    # NATS's own view of the source: origin entries not copied as of its last contact, and seconds
    # since that contact.
    source_lag: int | None = None
    idle: float | None = None
    inbound_last: int | None = None
    # The applier's recorded position: the next inbound sequence it applies (1: none applied yet).
    applied_next: int | None = None
    error: str = ""


def lag_row(view: InboundView) -> dict[str, Any]:
    """A region's lag behind one source for one shard: origin entries not copied yet, and copied
    entries not applied yet (None where unknown), with why when something is unknown."""
    if view.origin_last is not None and view.copied_through is not None:
        # Both journals answered: exact, where NATS's lag is only as fresh as its last contact.
        not_copied: int | None = max(0, view.origin_last - view.copied_through)
    else:
        not_copied = view.source_lag
    not_applied = None
    if view.inbound_last is not None:
        not_applied = max(0, view.inbound_last - (view.applied_next or 1) + 1)
    return {
        "shard": view.shard,
        "from": view.source,
        "not_copied": not_copied,
        "not_applied": not_applied,
        "idle": None if view.idle is None or view.idle == float("inf") else round(view.idle, 1),
        "error": view.error,
    }


def lag_lines(region: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The lag table of one region, for `engram local status` without --json."""
    if not rows:
        return []
    lines = [f"region {region}: lag behind the other regions",
             f"  {'shard':<6}{'from':<12}{'not copied':>11}{'not applied':>13}{'idle':>8}  error"]
    for row in rows:
        def show(value: Any) -> str:
            return "?" if value is None else str(value)
        idle = "?" if row["idle"] is None else f"{row['idle']:g}s"
        lines.append(f"  {row['shard']:<6}{row['from']:<12}{show(row['not_copied']):>11}"
                     f"{show(row['not_applied']):>13}{idle:>8}  {row['error']}".rstrip())
    return lines


@dataclass(frozen=True)
class RegionJournal:
    """One region as its lag is read: its cluster (stream names carry it), its shard count, and
    each other region with that region's cluster name."""

    region: str
    cluster: str
    shards: int
    linked_regions: Mapping[str, str] = field(default_factory=dict)


async def read_view(js: JetStreamContext | None, source_js: JetStreamContext | None, link: InboundLink,
                    region: str, timeout: float = ASK_TIMEOUT) -> InboundView:
    """Read what one inbound stream's figures are made of; what cannot be read stays None.

    ``js`` is the destination region's journal, ``source_js`` the source region's (None when it
    cannot be reached: not copied then falls back to NATS's own, possibly stale, figure).
    """
    shard, source = link.shard, link.source_region
    if js is None:
        return InboundView(shard, source, error=f"region {region}'s journal does not answer")
    errors = []
    origin_last = None
    if source_js is not None:
        try:
            info = await asyncio.wait_for(source_js.stream_info(stream_name(link.source_cluster, shard)),
                                          timeout)
            origin_last = info.state.last_seq or 0
        except Exception as exc:
            errors.append(f"origin stream: {type(exc).__name__}")
    try:
        info = await asyncio.wait_for(js.stream_info(link.stream), timeout)
    except nats.js.errors.NotFoundError:
        return InboundView(shard, source, origin_last, error="no inbound stream yet (no primary has "
                           "started applying this region)")
    except Exception as exc:
        return InboundView(shard, source, origin_last, error=f"inbound stream: {type(exc).__name__}")
    copied = await holdback.copied_through(js, link, region, timeout)
    if copied.through is None:
        errors.append(copied.why)
    lag = idle = None
    try:
        state = source_state_of(info, link)
        lag, idle = state.lag, state.idle
        if state.error:
            errors.append(state.error)
    except InboundError as exc:
        errors.append(str(exc))
    applied_next = None
    try:
        kv = await asyncio.wait_for(js.key_value(bucket_name(link.cluster)), timeout)
        applied_next = (await asyncio.wait_for(PositionStore(kv).load(link), timeout)).inbound_seq
    except nats.js.errors.BucketNotFoundError:
        applied_next = 1  # no applier has recorded a position: nothing applied yet
    except Exception as exc:
        errors.append(f"applied position: {type(exc).__name__}")
    return InboundView(shard, source, origin_last, copied.through, lag, idle, info.state.last_seq or 0,
                       applied_next, "; ".join(errors))


async def read_lags(regions: Mapping[str, RegionJournal], journals: Mapping[str, JetStreamContext | None],
                    timeout: float = ASK_TIMEOUT) -> dict[str, list[dict[str, Any]]]:
    """Each region's lag rows (lag_row) behind every region it is linked to, shard by shard.

    ``journals``: region -> its JetStream (None: it does not answer); a source region missing from
    it (another platform's, say) only costs the exact not-copied figure.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for region, journal in regions.items():
        views = []
        for source, source_cluster in journal.linked_regions.items():
            for shard in range(journal.shards):
                link = InboundLink(journal.cluster, shard, source, source_cluster, journal.region)
                views.append(await read_view(journals.get(region), journals.get(source), link, region,
                                             timeout))
        out[region] = [lag_row(v) for v in views]
    return out
