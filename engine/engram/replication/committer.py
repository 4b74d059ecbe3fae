"""Group commit: the primary turns the captured stream into journal entries.

The tap pumps raw stream bytes in; they are buffered as they came and sealed into an entry only
at a safe place (the scanner's: never inside MULTI...EXEC), so an entry's payload is stream bytes
of complete commands. The next batch fills while earlier appends are in flight; every append is
conditional on the sequence before it, so a primary that lost leadership finds out on its next
append (fenced). Appends also renew the leader's lease; when the stream is quiet a lease entry is
sent instead.

Link-only commands (PING, REPLCONF GETACK: they keep the replication link alive) are not journaled
when nothing else is buffered with them: an idle primary acknowledges them as soon as everything
before them is committed. Between data commands of one batch they are journaled with it; replicas
apply them without effect or reply.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engram import metrics
from engram.journal.client import Appended, Journal
from engram.journal.entries import Entry, EntryType
from engram.journal.errors import Fenced, JournalError, JournalTimeout
from engram.replication.streamscan import Scan
from engram.replication.tap import Tap

log = logging.getLogger(__name__)

CHECKSUM_INTERVAL = 5.0
# Bound once: observed for every entry of client writes.
_STAGE_BATCH = metrics.COMMIT_STAGE.labels("batch")
_STAGE_APPEND = metrics.COMMIT_STAGE.labels("append")
_STAGE_SETTLE = metrics.COMMIT_STAGE.labels("settle")


@dataclass
class _InFlight:
    entry: Entry
    expected: int
    msg_id: str
    end_offset: int
    # When the append was first sent, and when the try that may land now was sent.
    first_sent_at: float
    sent_at: float
    result: asyncio.Task[Appended] | None
    # The stream's elections seen when it was sent: a later one means no answer will ever come.
    elections: int = 0
    # When the tap read the batch's first byte; 0.0 for entries that carry no client write.
    read_at: float = 0.0


class Committer:
    """Appends the primary's batches, lease renewals and checksums to the journal, in order."""

    def __init__(
        self,
        journal: Journal,
        tap: Tap,
        node_id: str,
        epoch: int,
        last_seq: int,
        checksum: int,
        lease_seconds: float,
        max_batch_bytes: int,
        window: int,
        on_committed: Callable[[int, float], None],
        address: str = "",
    ) -> None:
        self.address = address
        self.journal = journal
        self.tap = tap
        self.node_id = node_id
        self.epoch = epoch
        self.lease_seconds = lease_seconds
        self.max_batch_bytes = max_batch_bytes
        self.window = max(1, window)
        self._on_committed = on_committed
        self.next_expected = last_seq  # the sequence our next append expects to follow
        self.committed_seq = last_seq
        self.checksum = checksum
        self.lease_until = time.monotonic() + lease_seconds
        self.fenced: Fenced | None = None
        self._counter = 0
        # Message ids must never repeat, across restarts and re-elections of the same node at the
        # same epoch: a retry recognises its own earlier landing by id, and a reused id would pass
        # off an entry of a previous incarnation as this one's (the split brain of issue 11).
        self._id_prefix = f"{node_id}.{secrets.token_hex(6)}.{epoch}"
        # Stream bytes received and not yet sealed into an entry (nor dropped as link-only), as
        # the chunks they came in; they start at stream offset _start, where db _start_db holds.
        self._chunks: deque[bytes | memoryview] = deque()
        self._buffered = 0
        self._start = tap.offset
        self._start_db = 0
        self._scan = Scan((tap.offset, 0, tap.offset))  # the tap's latest
        # When the first buffered byte and the latest chunk were read (commit stage timing).
        self._read_at = 0.0
        self._last_read_at = 0.0
        # Between taking a batch off the buffer and its last piece joining _inflight.
        self._sealing = False
        self._inflight: deque[_InFlight] = deque()
        self._wake = asyncio.Event()
        self._completed = asyncio.Event()
        self._last_sent = time.monotonic()
        self._checksum_due = False
        self._last_checksum = time.monotonic()
        self._stopping = False
        self._closed = False

    # -- input from the tap ------------------------------------------------------------------

    def feed(self, data: bytes, scan: Scan) -> None:
        """The tap's next chunk, and its scan: where the stream received so far may be cut."""
        now = time.monotonic()
        if not self._buffered:
            self._read_at = now
        self._last_read_at = now
        self._chunks.append(data)
        self._buffered += len(data)
        self._scan = scan
        self._drop_link_only()
        self._wake.set()

    def _cut(self) -> int | None:
        """Where the next entry may end: the last safe place, short of link-only commands that
        trail the data (see streamscan); None when nothing buffered can be sealed yet."""
        data_end = self._scan.data_end
        return data_end if data_end > self._start else None

    def _drop_link_only(self) -> None:
        """Forget buffered commands that only concern the replication link (see the module
        docstring) and acknowledge past them once everything before them is committed."""
        safe, db, data_end = self._scan
        if safe > self._start and data_end <= self._start:
            self._take(safe - self._start)
            self._start, self._start_db = safe, db
            self._ack_settled()

    def _take(self, size: int) -> bytes:
        """The first size bytes buffered, off the buffer; the common case, every buffered chunk,
        costs no copy when there is one chunk."""
        chunks = self._chunks
        self._buffered -= size
        first = chunks[0]
        if size == len(first) and isinstance(first, bytes):
            chunks.popleft()
            return first
        parts = []
        while size:
            chunk = chunks[0]
            if len(chunk) <= size:
                parts.append(chunks.popleft())
                size -= len(chunk)
            else:
                view = memoryview(chunk)
                parts.append(view[:size])
                chunks[0] = view[size:]
                size = 0
        return b"".join(parts)

    def _ack_settled(self) -> None:
        """With nothing sealed still uncommitted, everything before the buffer is journaled or
        needed no journaling: acknowledge it. A fenced batch leaves _inflight too, uncommitted:
        after a fence nothing more is acknowledged."""
        if not self._inflight and not self._sealing and self.fenced is None:
            self.tap.ack(self._start)

    @property
    def idle(self) -> bool:
        """Nothing captured is waiting for the journal."""
        return not self._buffered and not self._inflight and not self._sealing

    @property
    def stream_offset(self) -> int:
        """The stream offset after the last byte received."""
        return self._start + self._buffered

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Send entries until fenced; raises Fenced when another node holds the log."""
        completer = asyncio.get_running_loop().create_task(self._complete())
        renew_every = self.lease_seconds / 4
        try:
            while self.fenced is None and not self._closed:
                if completer.done():
                    completer.result()
                now = time.monotonic()
                if len(self._inflight) < self.window and not self._stopping:
                    cut = self._cut()
                    if cut is not None:
                        await self._send_batch(cut)
                        continue
                    if self._checksum_due and now - self._last_checksum >= CHECKSUM_INTERVAL:
                        await self._send(Entry(EntryType.CHECKSUM, self.epoch, self.node_id,
                                               checksum=self.checksum), -1)
                        self._checksum_due = False
                        self._last_checksum = now
                        continue
                    if now - self._last_sent >= renew_every:
                        await self._send(
                            Entry(EntryType.LEASE, self.epoch, self.node_id, address=self.address), -1
                        )
                        continue
                self._wake.clear()
                timeout = max(0.0, renew_every - (time.monotonic() - self._last_sent))
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
                # arrives as the wake-up fires, and a committer that outlives its primary term
                # would go on renewing a lease nobody serves under.
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            completer.cancel()
            for flight in self._inflight:
                if flight.result is not None:
                    flight.result.cancel()
        if self.fenced is not None:
            raise self.fenced

    async def _send_batch(self, cut: int) -> None:
        """Seal the buffered stream up to the safe place cut into one batch and send it."""
        payload = self._take(cut - self._start)
        db = self._start_db
        read_at = self._read_at
        # What stays buffered (a command still arriving) came with the latest chunk at the latest.
        self._read_at = self._last_read_at
        # Only link-only commands lie between cut and the scan's safe place: its db holds at cut.
        self._start, self._start_db = cut, self._scan.db
        self.checksum = zlib.crc32(payload, self.checksum)
        self._checksum_due = True
        self._sealing = True
        try:
            # Link-only commands after the batch go now; their ack waits for the batch.
            self._drop_link_only()
            # A batch larger than one journal message goes out in pieces; replicas apply it only
            # once the last piece arrives, and the tap acknowledges it only then.
            step = self.max_batch_bytes
            for start in range(0, len(payload), step):
                last = start + step >= len(payload)
                piece = Entry(EntryType.DATA, self.epoch, self.node_id, payload[start : start + step],
                              db=db, more=not last)
                await self._send(piece, cut if last else -1, read_at if last else 0.0)
        finally:
            self._sealing = False

    def _next_msg_id(self) -> str:
        self._counter += 1
        return f"{self._id_prefix}.{self._counter}"

    async def _send(self, entry: Entry, end_offset: int, read_at: float = 0.0) -> None:
        msg_id = self._next_msg_id()
        entry.term_seq = self._counter
        expected = self.next_expected
        self.next_expected += 1
        now = time.monotonic()
        self._last_sent = now
        try:
            # A lost ack must not hold the lease hostage: past half a lease, retry (same id).
            result: asyncio.Task[Appended] | None = await self.journal.append_pipelined(
                entry, expected, msg_id, timeout=self.lease_seconds / 2
            )
        except JournalError as exc:
            log.debug("append send failed: %s", exc)
            result = None  # the completer retries it in order
        self._inflight.append(
            _InFlight(entry, expected, msg_id, end_offset, now, now, result, self.journal.elections, read_at)
        )
        self._completed.set()

    async def _complete(self) -> None:
        """Settle in-flight appends in order; retry the ones that failed for want of quorum."""
        while self.fenced is None:
            while not self._inflight:
                self._completed.clear()
                await self._completed.wait()
            flight = self._inflight[0]
            seq: Appended | None
            if flight.result is None:
                seq = await self._retry(flight)
            else:
                try:
                    seq = await self._answer(flight, flight.result)
                except Fenced as exc:
                    if exc.actual is not None and exc.actual > flight.expected:
                        self._fence(exc)
                        return
                    # An earlier append of ours is missing: resend this one in order.
                    seq = await self._retry(flight)
                except JournalError:
                    seq = await self._retry(flight)
            if seq is None:
                return
            self._inflight.popleft()
            self._settle(flight, seq)
            self._wake.set()

    async def _answer(self, flight: _InFlight, result: asyncio.Task[Appended]) -> Appended:
        """The pipelined append's answer; JournalTimeout at once if the stream elects a leader first,
        since a request the old leader never answered is not answered by the new one."""
        elected = self.journal.election_after(flight.elections)
        try:
            await asyncio.wait({result, elected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            elected.cancel()
        if result.done():
            return result.result()
        result.cancel()
        raise JournalTimeout("the stream elected a new leader before answering")

    async def _retry(self, flight: _InFlight) -> Appended | None:
        delay = 0.05
        while True:
            # A retry that lands now proves leadership as of its own send time; one found to have
            # landed earlier proves it only as of the first send (see _settle).
            flight.sent_at = time.monotonic()
            try:
                # A short timeout: when the journal elects a new stream leader, the incumbent
                # must re-send at once rather than sit out a long request timeout.
                return await self.journal.append_until_elected(
                    flight.entry, flight.expected, flight.msg_id, timeout=self.lease_seconds / 2
                )
            except Fenced as exc:
                self._fence(exc)
                return None
            except JournalError as exc:
                log.info("journal append retry in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                # Retry often: when the journal comes back the incumbent should renew before any
                # replica's election clock runs out.
                delay = min(delay * 2, self.lease_seconds / 8)

    def _fence(self, exc: Fenced) -> None:
        self.fenced = exc
        self._wake.set()

    def _settle(self, flight: _InFlight, landed: Appended) -> None:
        seq = landed.seq
        if seq <= self.committed_seq:
            log.error("the journal acknowledged seq %d after %d: its history went backwards", seq,
                      self.committed_seq)
        if seq != flight.expected + 1:
            self._fence(Fenced(flight.expected, seq - 1))
            return
        self.committed_seq = seq
        # An entry that landed on an earlier try may have landed long ago, before a partition: it
        # proves nothing about leadership since then, so it renews the lease only from the first
        # send. Taking the retry's send time let a deposed primary serve stale reads (issue 11).
        since = flight.first_sent_at if landed.earlier else flight.sent_at
        self.lease_until = max(self.lease_until, since + self.lease_seconds)
        if flight.end_offset >= 0:
            self.tap.ack(flight.end_offset)
            if flight.read_at:
                _observe_stages(flight, landed)
        self._on_committed(seq, time.monotonic() - flight.first_sent_at)
        self._ack_settled()

    def close(self) -> None:
        """End this primary term: run() returns and nothing more is appended."""
        self._closed = True
        self._wake.set()

    def renew_now(self) -> None:
        """Send a lease renewal at once (a node handed leadership has no lease yet)."""
        self._last_sent = 0.0
        self._wake.set()

    async def final_append(self, entry: Entry, timeout: float) -> int:
        """Commit everything captured, then append entry as this leader's last word."""
        await self.drain(timeout)
        self._stopping = True
        while self._inflight:
            await asyncio.sleep(0.002)
        landed = await self.journal.append(entry, self.next_expected, self._next_msg_id())
        self.next_expected = self.committed_seq = landed.seq
        return landed.seq

    async def drain(self, timeout: float) -> None:
        """Wait until everything captured so far is committed."""
        deadline = time.monotonic() + timeout
        while not self.idle:
            if self.fenced is not None:
                raise self.fenced
            if time.monotonic() > deadline:
                raise JournalError(f"journal did not commit pending writes within {timeout:g}s")
            await asyncio.sleep(0.005)


def _observe_stages(flight: _InFlight, landed: Appended) -> None:
    """Record where an entry of client writes spent its time, from the tap's read to its ack."""
    acked = time.monotonic()
    # A retried append counts from its last send; an answer not timed (a fake journal) as at the ack.
    answered = landed.answered_at if flight.sent_at <= landed.answered_at <= acked else acked
    _STAGE_BATCH.observe(flight.first_sent_at - flight.read_at)
    _STAGE_APPEND.observe(answered - flight.sent_at)
    _STAGE_SETTLE.observe(acked - answered)
    metrics.COMMIT_PATH.observe(acked - flight.read_at)
