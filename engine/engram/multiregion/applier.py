"""Another region's writes, applied in this one (docs/multi-region.md, "Applying"): a shard's primary
tails the inbound stream of each region it is linked to and runs that region's stamped writes
(ENGRAM.MR.APPLY) on its Valkey, where the module applies them under the LWW rules and commits
them to this region's journal like local writes before it answers.

Where the applier stands is kept in this region's journal too (a key-value bucket), written only
after the writes before it were acknowledged. A new primary resumes from there; writes it applies
a second time change nothing, because a stamped write never wins against itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import hiredis
import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from engram import metrics
from engram.journal.entries import EntryType
from engram.multiregion.inbound import InboundError, InboundLink, Position, SourcedEntry, tail
from engram.replication.chain import TermChain
from engram.resp import ProtocolError, RequestParser
from engram.tasks import cancel_and_wait
from engram.valkey.connection import ValkeyConnection, encode

log = logging.getLogger(__name__)

APPLY = b"ENGRAM.MR.APPLY"
CLOCK = b"ENGRAM.MR.CLOCK"
# Entries whose writes are sent before their replies are read: each reply waits for a journal
# commit, so one at a time would apply at most one entry per commit.
WINDOW = 64
# How often the position is recorded while entries keep coming (seconds), and how soon once they
# pause: each record is a replicated write and a purge, which per entry would load this region's
# journal about as much as the writes it applies.
RECORD_EVERY = 0.5
RECORD_IDLE = 0.05
# An applier whose position has not moved for this long while its inbound stream holds entries past
# it is restarted from its recorded position. A chaos run saw a primary's appliers stop taking
# entries for good after its journal's stream leader was killed, with no error raised anywhere.
STUCK_AFTER = 15.0


def applier_stuck(unapplied: int, unmoved_for: float) -> bool:
    """Whether an applier with `unapplied` entries waiting, whose position has not moved for
    `unmoved_for` seconds, is stuck rather than busy."""
    return unapplied > 0 and unmoved_for >= STUCK_AFTER


def apply_lag(stamp: int, now: int) -> float:
    """Seconds from another region's stamp (microseconds of its wall clock) to now, here; 0 when
    the clocks are skewed the other way."""
    return max(0, now - stamp) / 1e6


@dataclass(frozen=True)
class OriginStamps:
    """What one journal entry of another region brings: the writes it stamped itself, and the newest
    clock among those writes and its clock stamps (ENGRAM.MR.CLOCK); 0 when it has neither."""

    writes: list[list[bytes]]
    hlc: int = 0


def origin_stamps(payload: bytes, origin_region: str) -> OriginStamps:
    """The ENGRAM.MR.APPLY commands of a journal entry's replication bytes that the origin region
    stamped itself (writes it had from a third region reach this one from there directly), and the
    newest of its own clocks the entry carries."""
    parser = RequestParser()
    parser.feed(payload)
    try:
        commands = parser.parse()
    except ProtocolError as exc:
        raise InboundError(f"an entry's replication bytes do not parse: {exc}") from None
    if parser.pending():
        raise InboundError(f"an entry's replication bytes end inside a command ({parser.pending()} bytes)")
    region = origin_region.encode()
    writes: list[list[bytes]] = []
    hlc = 0
    for args, _ in commands:
        if len(args) < 3 or args[2] != region:
            continue
        name = args[0].upper()
        if name not in (APPLY, CLOCK):
            continue
        try:
            hlc = max(hlc, int(args[1]))
        except ValueError:
            raise InboundError(f"{name.decode()} with a clock that is not a number: {args[1]!r}") from None
        if name == APPLY:
            writes.append(args)
    return OriginStamps(writes, hlc)


def bucket_name(cluster: str) -> str:
    """This region's record of how far each inbound stream of the cluster has been applied."""
    return f"ENGRAM_{cluster}_INBOUND"


def position_key(link: InboundLink) -> str:
    return f"{link.shard}.{link.source_region}"


@dataclass
class PositionStore:
    """Positions of a cluster's appliers, one per shard and source region, in a replicated bucket."""

    kv: KeyValue

    @classmethod
    async def open(cls, js: JetStreamContext, cluster: str, replicas: int = 3) -> PositionStore:
        name = bucket_name(cluster)
        try:
            kv = await js.create_key_value(api.KeyValueConfig(
                bucket=name, history=1, replicas=replicas, storage=api.StorageType.FILE, direct=False))
        except nats.js.errors.BadRequestError:
            kv = await js.key_value(name)
        return cls(kv)

    async def load(self, link: InboundLink) -> Position:
        """Where the applier of `link` stands."""
        return (await self.load_record(link)).position

    async def load_record(self, link: InboundLink) -> Recorded:
        """Where the applier stands, the newest clock of the source region applied before it, and
        where it stands in the origin's leader terms."""
        try:
            entry = await self.kv.get(position_key(link))
        except nats.js.errors.KeyNotFoundError:
            return Recorded(Position(), 0, TermChain())
        record = json.loads(entry.value or b"{}")
        at = Position(int(record["inbound_seq"]), int(record["origin_seq"]), str(record.get("identity", "")))
        # A record made before the chain was kept has none: the next entry read starts it.
        epoch = record.get("epoch")
        chain = TermChain(int(epoch), int(record.get("next_place", 1))) if epoch is not None else TermChain()
        return Recorded(at, int(record.get("hlc", 0)), chain)

    async def save(self, link: InboundLink, at: Position, hlc: int, chain: TermChain) -> None:
        record = {"inbound_seq": at.inbound_seq, "origin_seq": at.origin_seq, "identity": at.identity,
                  "hlc": hlc, "epoch": chain.epoch, "next_place": chain.next_place}
        await self.kv.put(position_key(link), json.dumps(record).encode())


@dataclass(frozen=True)
class Recorded:
    """An applier's record: where it resumes, the source's newest clock applied before that, and
    the origin's term chain there."""

    position: Position
    hlc: int
    chain: TermChain


@dataclass(frozen=True)
class Sent:
    """One entry whose writes were sent: what it brings, and where a restart resumes once they are
    acknowledged (inside a batch that came in pieces: before its first piece)."""

    sourced: SourcedEntry
    stamps: OriginStamps
    resume: Position
    chain: TermChain


class InboundApplier:
    """Applies one source region's writes to one shard, from the recorded position on, until cancelled
    or until the inbound stream cannot be trusted (SourceGap, a refused write: raised)."""

    def __init__(self, js: JetStreamContext, link: InboundLink, valkey_socket: str,
                 positions: PositionStore, origin: JetStreamContext | None = None) -> None:
        self.js = js
        # The source region's JetStream over the link: entries the copy skipped are read there.
        self.origin = origin
        self.link = link
        self.valkey_socket = valkey_socket
        self.positions = positions
        self.position = Position()
        self.applied_writes = 0
        self.last_origin_seq = 0
        # The newest clock of the source region applied here.
        self.hlc = 0
        # The same, as of the last recorded position: the tombstone frontier may rely on this one
        # only. A new primary re-applies everything after the recorded position, so a write
        # applied but not recorded yet can still arrive again (a counter's increment would count
        # twice, a removed field come back, had its stamps been forgotten behind a frontier).
        self.recorded_hlc = 0
        # The origin's leader terms as of `position`: a deposed leader's leftovers that landed
        # behind its successor's entry are skipped, as the origin's own replicas skip them.
        self.chain = TermChain()
        self.skipped = 0
        self._trimmed_below = 1

    async def run(self) -> None:
        recorded = await self.positions.load_record(self.link)
        self.position, self.hlc, self.chain = recorded.position, recorded.hlc, recorded.chain
        self.recorded_hlc = self.hlc
        conn = await ValkeyConnection.open(self.valkey_socket)
        # Each entry with what it brings; its writes' replies come back in order.
        in_flight: asyncio.Queue[Sent | None] = asyncio.Queue(WINDOW)
        tasks = [asyncio.create_task(self._send(conn, in_flight)),
                 asyncio.create_task(self._acknowledge(conn, in_flight))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # the first failure, raised
        finally:
            await cancel_and_wait(*tasks)
            conn.close()

    async def _send(self, conn: ValkeyConnection, in_flight: asyncio.Queue[Sent | None]) -> None:
        at, chain = self.position, self.chain
        pieces: list[bytes] = []
        # Where a restart resumes while a batch's pieces are read: before its first piece.
        before_pieces = (at, chain)
        async for sourced in tail(self.js, self.link, self.position, self.origin):
            entry = sourced.entry
            before = (at, chain)
            admitted, chain = chain.follow(entry)
            at = at.after(sourced)
            stamps = OriginStamps([])
            if not admitted:
                self._skip(sourced)
            elif entry.type is EntryType.LEADER:
                pieces = []  # a batch whose leader died before its last piece: never acknowledged
            elif entry.type is EntryType.DATA and entry.more:
                if not pieces:
                    before_pieces = before
                pieces.append(entry.payload)
            elif entry.type is EntryType.DATA and (pieces or entry.payload):
                stamps = self._stamps(sourced, b"".join((*pieces, entry.payload)))
                pieces = []
            for args in stamps.writes:
                conn.write(encode(args))
            await conn.drain()
            resume, resume_chain = before_pieces if pieces else (at, chain)
            await in_flight.put(Sent(sourced, stamps, resume, resume_chain))

    def _skip(self, sourced: SourcedEntry) -> None:
        self.skipped += 1
        entry = sourced.entry
        log.info("inbound %s: skipping origin entry %d (epoch %d, place %d in its term): not in the "
                 "origin's history, which its own replicas skip too", self.link.stream, sourced.origin_seq,
                 entry.epoch, entry.term_seq)

    def _stamps(self, sourced: SourcedEntry, payload: bytes) -> OriginStamps:
        entry = sourced.entry
        if entry.db != 0:
            raise InboundError(f"{self.link.stream} entry {sourced.inbound_seq}: a write to database "
                               f"{entry.db}; a multi-region cluster uses database 0 only")
        return origin_stamps(payload, self.link.source_region)

    async def _acknowledge(self, conn: ValkeyConnection, in_flight: asyncio.Queue[Sent | None]) -> None:
        recorded = time.monotonic()
        unrecorded = False
        while True:
            # What is not recorded yet a restart re-applies, idempotently.
            wait = max(0.0, recorded + RECORD_IDLE - time.monotonic()) if unrecorded else None
            try:
                item = await asyncio.wait_for(in_flight.get(), wait)
            except TimeoutError:
                # A record that failed is tried again RECORD_EVERY later, not in a busy loop.
                unrecorded, recorded = not await self._record(), time.monotonic()
                continue
            if item is None:
                return
            replies = len(item.stamps.writes)
            for _ in range(replies):
                reply = await conn.read_reply()
                if isinstance(reply, hiredis.ReplyError):
                    raise InboundError(f"{self.link.stream} entry {item.sourced.inbound_seq} (origin "
                                       f"{item.sourced.origin_seq}): this region refused its write: {reply}")
            self.applied_writes += replies
            if item.stamps.hlc:
                metrics.REGION_APPLY_LAG.labels(self.link.source_region).observe(
                    apply_lag(item.stamps.hlc, time.time_ns() // 1000))
            self.position, self.chain = item.resume, item.chain
            self.last_origin_seq = item.sourced.origin_seq
            self.hlc = max(self.hlc, item.stamps.hlc)
            unrecorded = True
            since = time.monotonic() - recorded
            if since >= RECORD_EVERY or (in_flight.empty() and since >= RECORD_IDLE):
                unrecorded, recorded = not await self._record(), time.monotonic()

    async def _record(self) -> bool:
        """Record the position and trim behind it; False when the journal did not take it."""
        try:
            hlc = self.hlc
            await self.positions.save(self.link, self.position, hlc, self.chain)
            self.recorded_hlc = hlc
            await self._trim()
            return True
        except nats.errors.Error as exc:  # the next record carries it; a restart re-applies
            log.info("inbound %s: position not recorded yet: %r", self.link.stream, exc)
            return False

    async def _trim(self) -> None:
        """Drop the inbound entries applied and recorded, but the last: the source region reads the
        last entry's origin sequence to know what this region copied (holdback.copied_through)."""
        keep_from = self.position.inbound_seq - 1
        if keep_from > self._trimmed_below:
            await self.js.purge_stream(self.link.stream, seq=keep_from)
            self._trimmed_below = keep_from
