"""What a node knows about its shard's leadership, learned only from the journal."""

from __future__ import annotations

import random
from dataclasses import dataclass

from engram.journal.entries import Entry, EntryType

# Renewals come every quarter lease; missing more than one of them (plus scheduling slack) is late.
LATE_LEASES = 0.35


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
    # The epoch whose leader was found gone (its client port refused a connection, see
    # leadership/liveness.py): no lease of a dead process can still be serving, so no backoff is due.
    gone_epoch: int = -1

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
            self.gone_epoch = -1  # a renewal that was in flight: believe the journal over a probe
            if entry.address:
                self.leader_address = entry.address

    def renewal_late(self, now: float) -> bool:
        """Renewals (every quarter lease) missed for long enough that the leader is worth a probe."""
        return now - self.last_renewal > self.lease_seconds * LATE_LEASES

    def leader_gone(self, epoch: int) -> None:
        """The leader of `epoch` was found not running; only counts while it is still the leader seen."""
        if epoch == self.epoch:
            self.gone_epoch = epoch

    def campaign_due(self, now: float) -> bool:
        """No renewal seen for longer than the backoff (the leader's lease has surely ended), or the
        leader's process is gone (nothing of it can serve)."""
        return self.gone_epoch == self.epoch or now - self.last_renewal > self.backoff

    def restart_clock(self, now: float) -> None:
        """Start the election clock again; a gone leader must be found gone again by a fresh probe."""
        self.last_renewal = now
        self.gone_epoch = -1
        self.new_backoff()
