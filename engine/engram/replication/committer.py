"""Group commit: the primary turns the captured stream into journal entries.

The next batch fills while earlier appends are in flight; every append is conditional on the
sequence before it, so a primary that lost leadership finds out on its next append (fenced).
Appends also renew the leader's lease; when the stream is quiet a lease entry is sent instead.
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

from engram.journal.client import Appended, Journal
from engram.journal.entries import Entry, EntryType
from engram.journal.errors import Fenced, JournalError
from engram.replication.tap import StreamCommand, Tap

log = logging.getLogger(__name__)

# Stream commands that only concern the replication link itself.
_LINK_ONLY = frozenset((b"replconf", b"ping"))
CHECKSUM_INTERVAL = 5.0


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
        self._parts: list[bytes] = []
        self._size = 0
        self._db = 0
        self._batch_db = 0
        self._in_tx = False
        self._seal_offset = -1  # stream offset up to which the buffered commands may be sealed
        self._stream_offset = tap.offset
        self._inflight: deque[_InFlight] = deque()
        self._wake = asyncio.Event()
        self._completed = asyncio.Event()
        self._last_sent = time.monotonic()
        self._checksum_due = False
        self._last_checksum = time.monotonic()
        self._stopping = False
        self._closed = False

    # -- input from the tap ------------------------------------------------------------------

    def feed(self, commands: list[StreamCommand]) -> None:
        for command in commands:
            name = command.args[0].lower()
            self._stream_offset = command.end_offset
            if name in _LINK_ONLY:
                if not self._parts and not self._inflight and not self._in_tx:
                    self.tap.ack(command.end_offset)
                elif not self._in_tx:
                    self._seal_offset = command.end_offset
                continue
            if not self._parts:
                self._batch_db = self._db
            if name == b"select" and len(command.args) > 1:
                self._db = int(command.args[1])
            elif name == b"multi":
                self._in_tx = True
            elif name == b"exec":
                self._in_tx = False
            self._parts.append(command.raw)
            self._size += len(command.raw)
            if not self._in_tx:
                self._seal_offset = command.end_offset
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing captured is waiting for the journal."""
        return not self._parts and not self._inflight

    @property
    def stream_offset(self) -> int:
        return self._stream_offset

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
                    if self._parts and self._seal_offset >= 0 and not self._in_tx:
                        await self._send_batch()
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

    async def _send_batch(self) -> None:
        # Everything buffered ends at a transaction boundary (checked by the caller).
        payload = b"".join(self._parts)
        end_offset = self._seal_offset
        self._parts = []
        self._size = 0
        self._seal_offset = -1
        self.checksum = zlib.crc32(payload, self.checksum)
        self._checksum_due = True
        # A batch larger than one journal message goes out in pieces; replicas apply it only once
        # the last piece arrives, and the tap acknowledges it only then.
        step = self.max_batch_bytes
        for start in range(0, len(payload), step):
            last = start + step >= len(payload)
            piece = Entry(EntryType.DATA, self.epoch, self.node_id, payload[start : start + step],
                          db=self._batch_db, more=not last)
            await self._send(piece, end_offset if last else -1)

    def _next_msg_id(self) -> str:
        self._counter += 1
        return f"{self._id_prefix}.{self._counter}"

    async def _send(self, entry: Entry, end_offset: int) -> None:
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
        self._inflight.append(_InFlight(entry, expected, msg_id, end_offset, now, now, result))
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
                    seq = await flight.result
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

    async def _retry(self, flight: _InFlight) -> Appended | None:
        delay = 0.05
        while True:
            # A retry that lands now proves leadership as of its own send time; one found to have
            # landed earlier proves it only as of the first send (see _settle).
            flight.sent_at = time.monotonic()
            try:
                # A short timeout: when the journal elects a new stream leader, the incumbent
                # must re-send at once rather than sit out a long request timeout.
                return await self.journal.append(
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
        self._on_committed(seq, time.monotonic() - flight.first_sent_at)
        if not self._parts and not self._inflight and not self._in_tx:
            self.tap.ack(self._stream_offset)

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
