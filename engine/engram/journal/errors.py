"""Exceptions at the journal boundary; callers never see a NATS exception."""

from __future__ import annotations


class JournalError(RuntimeError):
    """Base class of every journal failure."""


class Fenced(JournalError):
    """A conditional append found a different last sequence: someone else holds the log."""

    def __init__(self, expected: int, actual: int | None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"conditional append expected last sequence {expected}, journal has {actual}: "
            "another node appended, this node is fenced"
        )


class JournalTimeout(JournalError):
    """The journal did not answer in time; the append may or may not have landed."""


class NoQuorum(JournalError):
    """The shard's stream has no leader (no quorum of journal servers reachable)."""


class StreamMissing(JournalError):
    """The shard's stream does not exist (yet): only provisioning creates it, never a node."""


class IdentityMismatch(JournalError):
    """The stream or metadata found belongs to another cluster or shard: a node must not touch it."""
