"""Journal entries: what one message of a shard's stream holds, and its header encoding."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engram import ENGINE_VERSION

H_TYPE = "Engram-Type"
H_VERSION = "Engram-Version"
H_EPOCH = "Engram-Epoch"
H_NODE = "Engram-Node"
H_ADDR = "Engram-Addr"
H_DB = "Engram-Db"
H_CHECKSUM = "Engram-Checksum"
# Who appended a leadership entry: the named node itself (campaign) or the old primary (hand-off).
H_FROM = "Engram-From"
# A data entry whose batch continues in the next entry (a batch larger than one message).
H_MORE = "Engram-More"
# The genesis entry names the cluster and shard the stream belongs to.
H_CLUSTER_ID = "Engram-Cluster-Id"
H_SHARD = "Engram-Shard"
# An entry's place in its leader's term: 1, 2, 3... after the term's leadership entry.
H_TERM_SEQ = "Engram-Term-Seq"


class EntryType(enum.StrEnum):
    # The first entry of every shard's stream, written once by provisioning: its identity.
    GENESIS = "genesis"
    DATA = "data"
    # A node takes leadership of the shard (campaign) or is handed it (switchover).
    LEADER = "leader"
    LEASE = "lease"
    CHECKSUM = "checksum"


def format_version(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def parse_version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ValueError(f"malformed engine version in journal entry: {text!r}") from None


@dataclass(slots=True)
class Entry:
    """One journal message. For DATA, payload is replication-stream bytes of one batch."""

    type: EntryType
    epoch: int
    node: str
    payload: bytes = b""
    db: int = 0
    address: str = ""
    checksum: int = 0
    version: tuple[int, ...] = ENGINE_VERSION
    seq: int = 0
    msg_id: str = ""
    source: str = ""
    # Entries after this one already in the stream when it was delivered (replica lag).
    pending: int = 0
    more: bool = False
    # Place in the leader's term (DATA, LEASE, CHECKSUM): replicas apply a term's entries only
    # as a gap-free chain 1, 2, 3..., so an entry of a refused pipeline never counts.
    term_seq: int = 0
    # GENESIS only: the unique id of the cluster and the shard this stream belongs to.
    cluster_id: str = ""
    shard: int = -1

    def headers(self) -> dict[str, str]:
        h = {H_TYPE: self.type.value, H_VERSION: format_version(self.version), H_EPOCH: str(self.epoch)}
        h[H_NODE] = self.node
        if self.term_seq:
            h[H_TERM_SEQ] = str(self.term_seq)
        if self.type is EntryType.DATA:
            h[H_DB] = str(self.db)
            if self.more:
                h[H_MORE] = "1"
        elif self.type in (EntryType.LEADER, EntryType.LEASE) and self.address:
            h[H_ADDR] = self.address
        if self.type is EntryType.LEADER:
            h[H_FROM] = self.source or self.node
        elif self.type is EntryType.CHECKSUM:
            h[H_CHECKSUM] = str(self.checksum)
        elif self.type is EntryType.GENESIS:
            h[H_CLUSTER_ID] = self.cluster_id
            h[H_SHARD] = str(self.shard)
        return h

    @classmethod
    def decode(cls, headers: dict[str, str] | None, payload: bytes, seq: int) -> Entry:
        h = headers or {}
        try:
            kind = EntryType(h[H_TYPE])
            return cls(
                type=kind,
                epoch=int(h.get(H_EPOCH, "0")),
                node=h.get(H_NODE, ""),
                payload=payload,
                db=int(h.get(H_DB, "0")),
                address=h.get(H_ADDR, ""),
                checksum=int(h.get(H_CHECKSUM, "0")),
                version=parse_version(h.get(H_VERSION, "0")),
                seq=seq,
                msg_id=h.get("Nats-Msg-Id", ""),
                source=h.get(H_FROM, ""),
                more=h.get(H_MORE) == "1",
                term_seq=int(h.get(H_TERM_SEQ, "0")),
                cluster_id=h.get(H_CLUSTER_ID, ""),
                shard=int(h.get(H_SHARD, "-1")),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"journal entry {seq} is not an Engram entry: {exc}") from None
