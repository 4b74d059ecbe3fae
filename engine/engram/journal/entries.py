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


class EntryType(enum.StrEnum):
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

    def headers(self) -> dict[str, str]:
        h = {H_TYPE: self.type.value, H_VERSION: format_version(self.version), H_EPOCH: str(self.epoch)}
        h[H_NODE] = self.node
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
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"journal entry {seq} is not an Engram entry: {exc}") from None
