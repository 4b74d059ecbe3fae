"""A hybrid logical clock in microseconds: each region stamps its writes with it (docs/multi-region.md).

Physical time where clocks agree; where a region's clock lags, the stamps it has seen carry it
forward, so a write never gets a stamp below one it could have read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


def _wall_micros() -> int:
    return time.time_ns() // 1000


@dataclass
class Hlc:
    """Stamps that grow strictly, stay near wall time, and exceed every stamp observed."""

    clock: Callable[[], int] = field(default=_wall_micros)
    last: int = 0

    def now(self) -> int:
        """A stamp above every stamp given or observed before."""
        self.last = max(self.clock(), self.last + 1)
        return self.last

    def observe(self, remote: int) -> None:
        """Another region's stamp was applied here: later local stamps must exceed it."""
        self.last = max(self.last, remote)

    def drift(self) -> int:
        """How far ahead of this region's wall clock the stamps run, in microseconds (0 when not)."""
        return max(0, self.last - self.clock())
