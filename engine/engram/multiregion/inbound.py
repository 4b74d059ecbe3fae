"""A region's inbound streams: one per source region and shard, sourcing that region's shard stream
over the leaf node link, kept in this region's own journal (docs/multi-region.md, "Transport").

JetStream's sourcing copies each entry with its headers and adds ``Nats-Stream-Source``, which
names the origin stream, the entry's origin sequence and the origin stream's identity. A purge of
the origin past what this region had copied, or a recreated origin stream, is not reported by
NATS: sourcing carries on from what is there. The origin sequences show it, and `tail` raises
SourceGap on it, so that the region re-syncs rather than silently missing entries. Entries
skipped while the origin still holds them are read from the origin stream instead (`fill_gap`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

from engram import metrics
from engram.journal.client import STREAM_NAME_IN_USE, stream_name
from engram.journal.entries import Entry
from engram.journal.errors import JournalError
from engram.multiregion.link import api_prefix, check_region, deliver_prefix

log = logging.getLogger(__name__)

SOURCE_HEADER = "Nats-Stream-Source"
# Stream metadata: which region and stream an inbound stream copies.
META_SOURCE_REGION = "engram.source-region"
META_SOURCE_STREAM = "engram.source-stream"


class InboundError(JournalError):
    """An inbound stream that cannot be created, read or trusted; the message says which and why."""


class InboundMismatch(InboundError):
    """A stream of the inbound stream's name exists but sources something else."""


class SourceGap(InboundError):
    """The inbound stream skips origin entries: the origin was truncated past what this region had
    copied, or recreated. The entries in between are gone from the link; only a re-sync recovers."""

    def __init__(self, stream: str, inbound_seq: int, expected: int, found: int, recreated: bool) -> None:
        self.stream = stream
        self.inbound_seq = inbound_seq
        self.expected = expected
        self.found = found
        self.recreated = recreated
        why = "was recreated" if recreated else f"no longer holds origin entries {expected}..{found - 1}"
        super().__init__(
            f"inbound stream {stream} entry {inbound_seq}: expected origin sequence {expected}, "
            f"found {found}; the origin stream {why}: re-sync this region from the origin"
        )


@dataclass(frozen=True)
class InboundLink:
    """What one inbound stream copies: shard ``shard`` of ``source_cluster`` in ``source_region``,
    into the cluster ``cluster`` of ``region``."""

    cluster: str
    shard: int
    source_region: str
    source_cluster: str
    region: str

    def __post_init__(self) -> None:
        check_region(self.source_region)
        check_region(self.region)

    @property
    def source_stream(self) -> str:
        return stream_name(self.source_cluster, self.shard)

    @property
    def stream(self) -> str:
        """This region's copy: ENGRAM_<cluster>_<shard>_FROM_<region>. A region name starts with a
        letter, so this never takes the shape ENGRAM_<cluster>_<shard> of a shard's own stream."""
        return f"{stream_name(self.cluster, self.shard)}_FROM_{self.source_region}"

    @property
    def subject(self) -> str:
        """Sourcing keeps each entry's subject: the origin shard stream's."""
        return f"engram.{self.source_cluster}.{self.shard}"


def inbound_config(link: InboundLink, replicas: int = 3) -> api.StreamConfig:
    """The inbound stream: replicated and kept like a shard's own stream, filled only by sourcing."""
    return api.StreamConfig(
        name=link.stream,
        # No subjects: nothing in this region can publish into it, only the source fills it.
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        retention=api.RetentionPolicy.LIMITS,
        # An entry not yet applied must never be dropped to make room.
        discard=api.DiscardPolicy.NEW,
        deny_delete=True,
        allow_direct=False,
        # Origin message ids are kept and unique: a re-delivered entry is dropped as a duplicate.
        duplicate_window=120.0,
        sources=[
            api.StreamSource(
                name=link.source_stream,
                # Delivered on subjects only the link to this region carries (link.region_blocks).
                external=api.ExternalStream(api=api_prefix(link.source_region),
                                            deliver=deliver_prefix(link.region)),
            )
        ],
        metadata={META_SOURCE_REGION: link.source_region, META_SOURCE_STREAM: link.source_stream},
    )


def _same_source(info: api.StreamInfo, link: InboundLink) -> bool:
    sources = info.config.sources or []
    return (
        len(sources) == 1
        and sources[0].name == link.source_stream
        and sources[0].external is not None
        and sources[0].external.api == api_prefix(link.source_region)
    )


async def ensure_inbound(js: JetStreamContext, link: InboundLink, replicas: int = 3) -> None:
    """Create the inbound stream, or accept the one there if it copies the same source (idempotent).

    The link need not be up: the stream starts copying when the source region is reachable.
    """
    try:
        await js.add_stream(inbound_config(link, replicas))
        return
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise InboundError(f"cannot create inbound stream {link.stream}: {exc.description}") from exc
    except Exception as exc:
        raise InboundError(f"cannot create inbound stream {link.stream}: {exc!r}") from exc
    # The name is taken by a stream whose config differs from ours in some field.
    info = await js.stream_info(link.stream)
    if not _same_source(info, link):
        raise InboundMismatch(
            f"stream {link.stream} exists but does not source {link.source_stream} of region "
            f"{link.source_region}: delete it or choose another cluster name"
        )
    external = (info.config.sources or [])[0].external
    if external is not None and external.deliver != deliver_prefix(link.region):
        # Made before deliveries had subjects of their own: the same source, delivered where the
        # link now carries it. The stream keeps what it copied and resumes from there.
        try:
            await js.update_stream(inbound_config(link, info.config.num_replicas or replicas))
        except Exception as exc:
            raise InboundError(f"cannot update inbound stream {link.stream}: {exc!r}") from exc


@dataclass(frozen=True)
class SourceHeader:
    """The parsed ``Nats-Stream-Source`` header of a sourced entry.

    Format (nats-server 2.10 on): ``<stream>[:<api hash>] <seq> <filter> <transform> <subject>
    [<identity>]``; the identity changes when the origin stream is deleted and created again.
    """

    stream: str
    seq: int
    subject: str
    identity: str = ""

    @classmethod
    def parse(cls, value: str) -> SourceHeader:
        fields = value.split(" ")
        if len(fields) < 5 or not fields[1].isdigit():
            raise InboundError(f"not a sourced entry's {SOURCE_HEADER} header: {value!r}")
        return cls(fields[0].partition(":")[0], int(fields[1]), fields[4],
                   fields[5] if len(fields) > 5 else "")


@dataclass
class SourcedEntry:
    """An entry of another region, as this region's inbound stream holds it.

    ``entry.seq`` is the origin sequence (its place in the origin shard's journal, as a replica
    there sees it); ``inbound_seq`` is its place in this region's copy, where a reader resumes.
    """

    entry: Entry
    origin_region: str
    origin: SourceHeader
    inbound_seq: int

    @property
    def origin_seq(self) -> int:
        return self.origin.seq


def decode(link: InboundLink, headers: dict[str, str] | None, data: bytes | None,
           inbound_seq: int) -> SourcedEntry:
    """A sourced entry from a message of the inbound stream."""
    header = (headers or {}).get(SOURCE_HEADER)
    if header is None:
        raise InboundError(f"entry {inbound_seq} of {link.stream} has no {SOURCE_HEADER} header")
    origin = SourceHeader.parse(header)
    if origin.stream != link.source_stream:
        raise InboundError(f"entry {inbound_seq} of {link.stream} comes from {origin.stream}, "
                           f"not from {link.source_stream}")
    try:
        entry = Entry.decode(headers, data or b"", origin.seq)
    except ValueError as exc:
        raise InboundError(f"entry {inbound_seq} of {link.stream}: {exc}") from None
    return SourcedEntry(entry, link.source_region, origin, inbound_seq)


async def read(js: JetStreamContext, link: InboundLink, inbound_seq: int) -> SourcedEntry | None:
    """The entry at inbound_seq of the inbound stream, or None if there is none."""
    try:
        msg = await js.get_msg(link.stream, inbound_seq, direct=False)
    except nats.js.errors.NotFoundError:
        return None
    except Exception as exc:
        raise InboundError(f"cannot read {link.stream} entry {inbound_seq}: {exc!r}") from exc
    return decode(link, msg.headers, msg.data, msg.seq or inbound_seq)


@dataclass(frozen=True)
class Position:
    """Where a reader of an inbound stream stands: the next inbound sequence to read and the origin
    sequence (and identity) that must come with it. A fresh reader expects origin sequence 1, the
    origin's genesis entry: anything later means the origin was truncated before it was copied."""

    inbound_seq: int = 1
    origin_seq: int = 1
    identity: str = ""

    def after(self, sourced: SourcedEntry) -> Position:
        return Position(sourced.inbound_seq + 1, sourced.origin_seq + 1, sourced.origin.identity)


def check_next(link: InboundLink, at: Position, sourced: SourcedEntry) -> None:
    """Raise SourceGap unless ``sourced`` is exactly the origin entry expected at ``at``."""
    recreated = bool(at.identity and sourced.origin.identity and at.identity != sourced.origin.identity)
    if recreated or sourced.origin_seq != at.origin_seq:
        raise SourceGap(link.stream, sourced.inbound_seq, at.origin_seq, sourced.origin_seq, recreated)


async def fill_gap(origin: JetStreamContext, link: InboundLink, at: Position, sourced: SourcedEntry,
                   gap: SourceGap) -> list[SourcedEntry]:
    """The origin entries the inbound stream skipped before ``sourced``, read from the origin stream
    itself over the link; raises ``gap`` (check_next's) when the origin no longer holds all of them.

    Sourcing was seen to skip entries the origin still held (57 of them, after the inbound stream's
    leader changed while it copied: "raft: not leader"). Each filled entry resumes at ``sourced``.
    """
    if sourced.origin_seq < at.origin_seq:
        raise gap  # behind the position: nothing the origin could fill
    filled = []
    for seq in range(at.origin_seq, sourced.origin_seq):
        try:
            msg = await origin.get_msg(link.source_stream, seq, direct=False)
        except nats.js.errors.NotFoundError:
            raise gap from None  # truncated past it: only a re-sync recovers
        except Exception as exc:
            raise InboundError(f"{link.stream}: cannot read origin entry {seq} of {link.source_stream} "
                               f"to fill a gap: {exc!r}") from exc
        try:
            entry = Entry.decode(msg.headers, msg.data or b"", seq)
        except ValueError as exc:
            raise InboundError(f"origin entry {seq} of {link.source_stream}: {exc}") from None
        header = SourceHeader(link.source_stream, seq, msg.subject or link.subject, sourced.origin.identity)
        filled.append(SourcedEntry(entry, link.source_region, header, sourced.inbound_seq - 1))
    return filled


async def tail(js: JetStreamContext, link: InboundLink, at: Position | None = None,
               origin: JetStreamContext | None = None) -> AsyncIterator[SourcedEntry]:
    """Yield the other region's entries from ``at`` (default: the start) on, forever, in origin
    order. Entries the inbound stream skipped are read from ``origin`` (the other region's JetStream,
    over the link) when given and it still holds them; otherwise raise SourceGap there."""
    at = at or Position()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def _on_message(msg: Msg) -> None:
        queue.put_nowait(msg)

    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, at.inbound_seq)
    )
    try:
        sub = await js.subscribe(link.subject, cb=_on_message, ordered_consumer=True, config=config,
                                 idle_heartbeat=1.0, stream=link.stream)
    except Exception as exc:
        raise InboundError(f"cannot read inbound stream {link.stream}: {exc!r}") from exc
    try:
        while True:
            msg = await queue.get()
            sourced = decode(link, msg.headers, msg.data, msg.metadata.sequence.stream)
            try:
                check_next(link, at, sourced)
            except SourceGap as gap:
                if origin is None or gap.recreated:
                    raise
                filled = await fill_gap(origin, link, at, sourced, gap)
                metrics.REGION_GAP_ENTRIES_FILLED.labels(link.source_region).inc(len(filled))
                log.warning("inbound %s: origin entries %d..%d were skipped by the copy; read them from "
                            "region %s's stream", link.stream, gap.expected, gap.found - 1,
                            link.source_region)
                for entry in filled:
                    at = at.after(entry)
                    yield entry
            at = at.after(sourced)
            yield sourced
    finally:
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, OSError) as exc:
            log.debug("inbound tail unsubscribe: %r", exc)


@dataclass(frozen=True)
class SourceState:
    """How the copy of one source is doing, as this region's stream leader reports it."""

    # Origin entries not yet copied, as of the last contact; not updated while the link is down.
    lag: int
    # Seconds since the last entry or heartbeat from the source; grows while the link is down.
    idle: float
    error: str = ""


async def source_state(js: JetStreamContext, link: InboundLink) -> SourceState:
    """The inbound stream's view of its source (lag, last contact, error)."""
    try:
        info = await js.stream_info(link.stream)
    except Exception as exc:
        raise InboundError(f"cannot read inbound stream {link.stream}: {exc!r}") from exc
    return source_state_of(info, link)


def source_state_of(info: api.StreamInfo, link: InboundLink) -> SourceState:
    """source_state from stream info the caller already has."""
    for source in info.sources or []:
        if source.name == link.source_stream:
            error = (source.error or {}).get("description", "") if source.error else ""
            # nats-py leaves `active` in nanoseconds; -1 when there has been no contact yet.
            idle = (source.active or 0) / 1e9 if (source.active or 0) >= 0 else float("inf")
            return SourceState(source.lag or 0, idle, error)
    raise InboundError(f"inbound stream {link.stream} does not source {link.source_stream}")


# A source that has sent nothing, not even a heartbeat, for this long while its region's journal
# answers is stuck in NATS's retry backoff: after a region came back from a freeze, copying out of
# it was seen to wait 38-54 s. A new leader of the inbound stream sets its source up at once (0.8 s).
STALLED_AFTER = 6.0
# At most one such restart per link this often: the new leader needs a moment to be heard from.
RESTART_SOURCE_EVERY = 20.0


def source_stalled(idle: float, origin_answers: bool, since_restart: float) -> bool:
    """Whether to restart a link's source by moving its inbound stream's leader."""
    return idle > STALLED_AFTER and origin_answers and since_restart >= RESTART_SOURCE_EVERY
