"""What a node knows about its shard's leadership, learned only from the journal."""

from __future__ import annotations

import random
from dataclasses import dataclass

from engram.journal.entries import Entry, EntryType


@dataclass
class LeaderView:
    """The current epoch and leader, and when the leader was last heard renewing."""

    lease_seconds: float
    epoch: int = 0
    leader_id: str = ""
    leader_address: str = ""
    last_renewal: float = 0.0
    # Randomised per node and per round so two replicas rarely campaign at the same instant.
    backoff: float = 0.0

    def __post_init__(self) -> None:
        self.new_backoff()

    def new_backoff(self) -> None:
        # Longer than the lease: the old leader stops serving before anyone may take over.
        self.backoff = self.lease_seconds * (1.25 + 0.25 * random.random())

    def observe(self, entry: Entry, now: float) -> None:
        if entry.type is EntryType.LEADER:
            self.epoch = entry.epoch
            self.leader_id = entry.node
            self.leader_address = entry.address
            self.last_renewal = now
            self.new_backoff()
        elif entry.epoch == self.epoch and entry.node == self.leader_id:
            self.last_renewal = now
            if entry.address:
                self.leader_address = entry.address

    def campaign_due(self, now: float) -> bool:
        """No renewal seen for longer than the backoff: the leader's lease has surely ended."""
        return now - self.last_renewal > self.backoff
