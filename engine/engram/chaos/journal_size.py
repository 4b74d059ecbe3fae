"""How much journal each shard holds over a chaos run: with snapshots and truncation it stays bounded
however many entries are written (docs/snapshots.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from engram.journal.client import Journal, StreamState
from engram.journal.security import PLAIN, JournalSecurity

log = logging.getLogger(__name__)

SAMPLE_EVERY = 5.0


@dataclass
class ShardJournal:
    """One shard's journal over the run: what it held at the start, at most and at the end, and how
    many entries were written in between."""

    shard: int
    first: StreamState | None = None
    last: StreamState | None = None
    max_messages: int = 0
    max_bytes: int = 0
    samples: int = 0

    def add(self, state: StreamState) -> None:
        if self.first is None:
            self.first = state
        self.last = state
        self.max_messages = max(self.max_messages, state.messages)
        self.max_bytes = max(self.max_bytes, state.bytes)
        self.samples += 1

    @property
    def written(self) -> int:
        return self.last.last_seq - self.first.last_seq if self.first and self.last else 0

    @property
    def truncated_to(self) -> int:
        """The first entry still held at the end (1: never truncated)."""
        return self.last.first_seq if self.last else 0

    def to_json(self) -> dict[str, int]:
        return {
            "shard": self.shard, "written": self.written, "samples": self.samples,
            "messages_start": self.first.messages if self.first else 0,
            "messages_end": self.last.messages if self.last else 0, "messages_max": self.max_messages,
            "bytes_start": self.first.bytes if self.first else 0,
            "bytes_end": self.last.bytes if self.last else 0, "bytes_max": self.max_bytes,
            "first_seq_end": self.truncated_to, "last_seq_end": self.last.last_seq if self.last else 0,
        }

    def text(self) -> str:
        mb = 1024 * 1024
        return (f"shard {self.shard}: {self.written:,} entries written; held "
                f"{self.first.messages if self.first else 0:,} at the start, at most {self.max_messages:,} "
                f"({self.max_bytes / mb:.1f} MB), {self.last.messages if self.last else 0:,} at the end "
                f"(from entry {self.truncated_to:,})")


@dataclass
class JournalWatch:
    """Samples every shard's stream state until stopped; a sample missed during a fault is skipped."""

    urls: list[str]
    cluster: str
    shards: int
    every: float = SAMPLE_EVERY
    by_shard: dict[int, ShardJournal] = field(default_factory=dict)
    security: JournalSecurity = PLAIN

    async def run(self, stop: asyncio.Event) -> None:
        self.by_shard = {s: ShardJournal(s) for s in range(self.shards)}
        journal: Journal | None = None
        try:
            while True:
                journal = journal or await self._connect()
                if journal is not None:
                    await self._sample(journal)
                if stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)
        finally:
            if journal is not None:
                await journal.close()

    async def _connect(self) -> Journal | None:
        try:
            return await Journal.connect(self.urls, self.cluster, 0, name="engram-chaos-journal-watch",
                                         security=self.security)
        except Exception as exc:  # the journal may be the fault being injected
            log.info("journal size not sampled: %r", exc)
            return None

    async def _sample(self, journal: Journal) -> None:
        for shard, seen in self.by_shard.items():
            try:
                seen.add(await journal.for_shard(shard).state())
            except Exception as exc:
                log.info("journal size of shard %d not sampled: %r", shard, exc)
