"""Which entries of a shard's journal belong to its history (docs/durability.md, "A term is a chain").

A leader pipelines conditional appends; when one is refused because another node's entry took its
place, the ones behind it can still land: a deposed leader's leftovers behind a new leader's
campaign, or a new leader's own appends behind such leftovers. Each carries its leader's epoch and
its place in that leader's term, so a reader keeps to the history by admitting only the next place
of the latest leader's term. Replicas (replication/applier.py) and other regions' appliers
(multiregion/applier.py) read by the same rule, so every reader skips the same entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from engram.journal.entries import Entry, EntryType


def continues_term(entry: Entry, epoch: int, next_place: int) -> bool:
    """Whether an entry takes the next place of the term of the leader of `epoch`."""
    return entry.epoch == epoch and entry.term_seq == next_place


@dataclass(frozen=True)
class TermChain:
    """Where a reader stands in the leaders' terms: the latest leader's epoch and the place its next
    entry must take. epoch None: not known yet (a reader resuming from a record that predates it),
    and the first entry read is taken as in the history."""

    epoch: int | None = None
    next_place: int = 1

    def follow(self, entry: Entry) -> tuple[bool, TermChain]:
        """Whether the entry is in the history, and where the reader stands after it."""
        if entry.type is EntryType.GENESIS:
            return True, self
        if entry.type is EntryType.LEADER:
            return True, TermChain(entry.epoch, 1)
        if self.epoch is None:
            return True, TermChain(entry.epoch, entry.term_seq + 1)
        if continues_term(entry, self.epoch, self.next_place):
            return True, TermChain(self.epoch, self.next_place + 1)
        return False, self
