"""Where a load generator connects: kept apart from targets.py so generator processes import little."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """Where the load generator connects; cluster=True means route by slot from these seeds."""

    addresses: tuple[str, ...]
    cluster: bool
    # How the target is reached, for the report ("shard 0's primary, bypassing the endpoint relay").
    note: str = ""

    @property
    def first(self) -> tuple[str, int]:
        host, port = self.addresses[0].rsplit(":", 1)
        return host, int(port)
