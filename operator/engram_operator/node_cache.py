"""One list of the Kubernetes Nodes for every MemoryCluster's reconcile, refreshed at most every TTL.

Every cluster reconciles every few seconds and needs the nodes' zones and readiness. Listing all
Nodes once per cluster per tick costs the API server N full lists; the zones change rarely, and
a few seconds of staleness are nothing next to the grace periods the decisions already apply
(availability.py). Concurrent reconciles that find the list stale wait for one refresh together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

# The resync interval of the cluster timers: each reconcile sees nodes at most one tick old.
TTL_SECONDS = 5.0

Fetch = Callable[[], Awaitable[list[dict[str, Any]]]]


def stale(fetched_at: float | None, now: float, ttl: float = TTL_SECONDS) -> bool:
    """Whether a list taken at ``fetched_at`` (None: never) must be taken again at ``now``."""
    return fetched_at is None or now - fetched_at >= ttl or now < fetched_at


class NodeCache:
    """The shared, throttled node list (fetch is the API call; clock is monotonic seconds)."""

    def __init__(self, fetch: Fetch, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._nodes: list[dict[str, Any]] = []
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> list[dict[str, Any]]:
        async with self._lock:
            if stale(self._fetched_at, self._clock(), self._ttl):
                # A failed list raises to the caller and leaves the cache stale: the next asks again.
                self._nodes = await self._fetch()
                self._fetched_at = self._clock()
            return self._nodes
