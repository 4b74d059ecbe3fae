"""How far a region may truncate a shard's journal when other regions copy it: never past an entry
a linked region has not copied yet (docs/multi-region.md, "On truncation").

A snapshot lets a region drop the journal entries behind it; another region that was cut off
still needs them, or it can only re-sync. So the truncation point is held back to the oldest
entry some linked region lacks, and a region that cannot be asked holds back everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import nats.js.errors
from nats.js.client import JetStreamContext

from engram.multiregion.inbound import SOURCE_HEADER, InboundError, InboundLink, SourceHeader


@dataclass(frozen=True)
class Copied:
    """How much of a shard's journal one linked region holds: origin entries 1..through, or
    through=None when that region could not be asked (cut off, or its inbound stream missing)."""

    region: str
    through: int | None
    why: str = ""


@dataclass(frozen=True)
class Hold:
    """The truncation point once linked regions are heard: `keep_from` (None: truncate nothing),
    and which regions held it below what the snapshots alone allow."""

    keep_from: int | None
    held_by: tuple[str, ...] = ()
    reason: str = ""


def hold_back(keep_from: int | None, copied: Sequence[Copied]) -> Hold:
    """The first entry to keep: the snapshots' point, lowered to the first entry some linked region
    has not copied; nothing goes while any region's copy is unknown."""
    if keep_from is None:
        return Hold(None)
    unknown = [c for c in copied if c.through is None]
    if unknown:
        names = tuple(c.region for c in unknown)
        why = "; ".join(f"{c.region}: {c.why or 'not answering'}" for c in unknown)
        return Hold(None, names, f"no truncation while a linked region's copy is unknown ({why})")
    lacking = [c for c in copied if c.through is not None and c.through + 1 < keep_from]
    if not lacking:
        return Hold(keep_from)
    point = min(c.through + 1 for c in lacking if c.through is not None)
    names = tuple(sorted(c.region for c in lacking))
    return Hold(point, names, f"held at entry {point}: {', '.join(names)} have not copied past it")


async def copied_through(js: JetStreamContext, link: InboundLink, region: str, timeout: float) -> Copied:
    """Ask `region`'s journal (js: its JetStream domain, over the link) which origin entries its
    inbound stream `link` holds: the origin sequence of its last entry (0 when it holds none yet)."""
    try:
        info = await asyncio.wait_for(js.stream_info(link.stream), timeout)
    except nats.js.errors.NotFoundError:
        return Copied(region, None, f"its inbound stream {link.stream} does not exist")
    except Exception as exc:
        return Copied(region, None, f"{link.stream} did not answer ({type(exc).__name__})")
    last = info.state.last_seq or 0
    if last == 0:
        return Copied(region, 0)
    try:
        msg = await asyncio.wait_for(js.get_msg(link.stream, last, direct=False), timeout)
    except nats.js.errors.NotFoundError:
        # Its last entry is gone, so the origin sequence it copied cannot be read: an inbound
        # stream must keep its last entry when it is trimmed.
        return Copied(region, None, f"{link.stream} no longer holds its last entry {last}")
    except Exception as exc:
        return Copied(region, None, f"{link.stream} did not answer ({type(exc).__name__})")
    header = (msg.headers or {}).get(SOURCE_HEADER)
    if header is None:
        return Copied(region, None, f"entry {last} of {link.stream} has no {SOURCE_HEADER} header")
    try:
        origin = SourceHeader.parse(header)
    except InboundError as exc:
        return Copied(region, None, str(exc))
    if origin.stream != link.source_stream:
        return Copied(region, None, f"{link.stream} copies {origin.stream}, not {link.source_stream}")
    return Copied(region, origin.seq)
