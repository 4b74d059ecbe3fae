"""Replica apply: tail the shard's journal and execute its data entries on the local Valkey."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

from engram import ENGINE_VERSION
from engram.journal.client import Journal, check_genesis
from engram.journal.entries import Entry, EntryType, format_version
from engram.journal.errors import IdentityMismatch, JournalError
from engram.replication.chain import TermChain
from engram.snapshots.record import Position
from engram.valkey.connection import ValkeyConnection, encode

log = logging.getLogger(__name__)

# Replies are switched off while a batch runs and back on after it, so each entry costs one +OK.
_REPLY_OFF = encode([b"CLIENT", b"REPLY", b"OFF"])
_REPLY_ON = encode([b"CLIENT", b"REPLY", b"ON"])
# Entries a pipelined applier writes before it reads their replies.
PIPELINE_DEPTH = 512


class ApplyHalted(RuntimeError):
    """The replica stopped applying and must not take leadership."""


class JournalGap(JournalError):
    """The entry after the last applied one is gone (truncated): only a snapshot can bridge it."""


class Applier:
    """Applies committed entries in order and keeps the running checksum of the data."""

    def __init__(
        self,
        journal: Journal,
        valkey_socket: str,
        on_entry: Callable[[Entry], bool],
        cluster_id: str,
        pipelined: bool = False,
    ) -> None:
        self.journal = journal
        # Replaying for a snapshot: write entries without waiting for each one's reply while more are
        # pending, and check the replies in bulk. A live replica waits for each (its applied_seq is
        # what it campaigns on).
        self.pipelined = pipelined
        self._unread: list[int] = []
        self.cluster_id = cluster_id
        self.valkey_socket = valkey_socket
        self._on_entry = on_entry
        self.applied_seq = 0
        self.checksum = 0
        self.halted = ""
        # The stream's genesis entry was applied and names this cluster and shard: only then may
        # this node campaign (a stream without it is not the one provisioning created).
        self.identity_verified = False
        # The last leadership entry's epoch (they only grow in one history) and the next place in
        # its term; entries off the chain are skipped. Epoch 0 until a leadership entry is applied.
        self.chain = TermChain(0, 1)
        self.skipped = 0
        # Who the last leadership entry named, carried by snapshots with the term chain.
        self.leader_id = ""
        self.leader_address = ""
        self._conn: ValkeyConnection | None = None
        self._partial: list[bytes] = []

    def reset(self) -> None:
        self.applied_seq = 0
        self.checksum = 0
        self.halted = ""
        self.identity_verified = False
        self.chain = TermChain(0, 1)
        self.leader_id = ""
        self.leader_address = ""
        self._partial = []

    @property
    def mid_batch(self) -> bool:
        """Pieces of a batch are applied and its last piece is not: no snapshot may be cut here."""
        return bool(self._partial)

    def position(self) -> Position:
        """Where this applier stands, for a snapshot taken of its Valkey now."""
        if self._partial:
            raise RuntimeError("no position in the middle of a batch")
        return Position(self.applied_seq, self.checksum, self.leader_epoch, self.chain.next_place,
                        self.leader_id, self.leader_address)

    @property
    def leader_epoch(self) -> int:
        return self.chain.epoch or 0

    def restore(self, position: Position) -> None:
        """Continue after a snapshot loaded into Valkey, as if the journal had been applied up to it.

        The snapshot's record named this cluster and shard (checked before loading), which stands
        for the genesis entry that truncation may have removed.
        """
        self.reset()
        self.applied_seq = position.seq
        self.checksum = position.checksum
        self.chain = TermChain(position.epoch, position.term_next)
        self.leader_id = position.leader_id
        self.leader_address = position.leader_address
        self.identity_verified = True

    async def run(self) -> None:
        """Tail from the entry after the last applied one; returns when on_entry says stop."""
        self._conn = await ValkeyConnection.open(self.valkey_socket)
        # The journal's entries are already committed: the module must neither hold nor refuse them.
        await self._conn.execute("ENGRAM.INTERNAL")
        try:
            async for entry in self.journal.tail(self.applied_seq + 1):
                if entry.seq <= self.applied_seq:
                    continue
                if entry.seq != self.applied_seq + 1:
                    # JetStream starts a consumer at the first entry it still holds.
                    raise JournalGap(
                        f"the journal resumed at entry {entry.seq} after applied entry {self.applied_seq}: "
                        f"entries {self.applied_seq + 1}..{entry.seq - 1} were truncated"
                    )
                if entry.version > ENGINE_VERSION:
                    self._halt(
                        f"entry {entry.seq} was written by engine {format_version(entry.version)}, newer "
                        f"than this node's {format_version(ENGINE_VERSION)}; upgrade this node"
                    )
                if not self.identity_verified:
                    self._check_identity(entry)
                in_history, chain = self.chain.follow(entry)
                if not in_history:
                    self._skip(entry)
                    self.applied_seq = entry.seq  # a position passed, nothing applied
                    continue
                if entry.type is EntryType.LEADER and entry.epoch <= self.leader_epoch:
                    self._halt(
                        f"leadership entry {entry.seq} has epoch {entry.epoch}, not above the "
                        f"epoch {self.leader_epoch} before it: the stream holds two histories"
                    )
                self.chain = chain
                if entry.type is EntryType.DATA:
                    await self._apply(entry)
                elif entry.type is EntryType.LEADER:
                    self.leader_id, self.leader_address = entry.node, entry.address
                    # Pieces of a batch whose leader died before its last piece: never acknowledged.
                    self._partial = []
                elif entry.type is EntryType.CHECKSUM and entry.checksum != self.checksum:
                    self._halt(
                        f"checksum mismatch at entry {entry.seq}: journal says {entry.checksum}, "
                        f"applied data gives {self.checksum}"
                    )
                if not self.pipelined or entry.pending == 0 or len(self._unread) >= PIPELINE_DEPTH:
                    await self._confirm()
                self.applied_seq = entry.seq
                if not self._on_entry(entry):
                    await self._confirm()
                    return
        finally:
            self._conn.close()
            self._conn = None

    def _skip(self, entry: Entry) -> None:
        """An entry off the current leader's term chain (replication/chain.py): a deposed leader's
        leftover, or a new leader's append behind one. Applying it would mix two histories (seen as
        a checksum mismatch that halted every replica); its writer was refused and acknowledged
        none of them."""
        self.skipped += 1
        log.info("skipping entry %d (epoch %d, place %d in its term): not next in the term of epoch %d, "
                 "which expects place %d", entry.seq, entry.epoch, entry.term_seq, self.leader_epoch,
                 self.chain.next_place)

    def _check_identity(self, entry: Entry) -> None:
        if entry.seq != 1:
            # Entries before this one were truncated away; the stream's metadata was checked when
            # the node opened it, and a snapshot restore carries the identity on.
            self._halt(f"the stream starts at entry {entry.seq}: its genesis entry is gone")
        try:
            check_genesis(entry, self.journal.stream, self.cluster_id, self.journal.shard)
        except IdentityMismatch as exc:
            self._halt(str(exc))
        self.identity_verified = True

    async def _apply(self, entry: Entry) -> None:
        conn = self._conn
        assert conn is not None
        self.checksum = zlib.crc32(entry.payload, self.checksum)
        if entry.more:
            self._partial.append(entry.payload)
            return
        payload = b"".join((*self._partial, entry.payload)) if self._partial else entry.payload
        self._partial = []
        conn.write(b"".join((_REPLY_OFF, encode([b"SELECT", str(entry.db).encode()]), payload, _REPLY_ON)))
        self._unread.append(entry.seq)

    async def _confirm(self) -> None:
        """Read the reply of every entry written and not yet confirmed; any but OK halts."""
        conn = self._conn
        assert conn is not None
        unread, self._unread = self._unread, []
        for seq in unread:
            reply = await conn.read_reply()
            if reply != b"OK":
                self._halt(f"valkey did not confirm entry {seq}: {reply!r}")

    def _halt(self, reason: str) -> None:
        self.halted = reason
        log.error("replica halted: %s", reason)
        raise ApplyHalted(reason)
