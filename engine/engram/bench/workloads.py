"""What a benchmark run asks of each target: the workloads and the knobs shared by every generator."""

from __future__ import annotations

from dataclasses import dataclass

# valkey-benchmark/redis-benchmark name keys `key:` + a 12-digit number; the Python generator and the
# pre-population use the same names so GETs hit the same keys whichever generator runs.
KEY_FORMAT = "key:%012d"


@dataclass(frozen=True)
class Workload:
    """A request mix: each request is a GET with probability read_fraction, else a SET."""

    name: str
    read_fraction: float
    description: str

    @property
    def needs_data(self) -> bool:
        """GETs must find values, so the keyspace is filled before the measured run."""
        return self.read_fraction > 0


WORKLOADS: dict[str, Workload] = {
    "set": Workload("set", 0.0, "SET only"),
    "get": Workload("get", 1.0, "GET only (keys pre-populated)"),
    "mixed": Workload("mixed", 0.8, "80% GET / 20% SET"),
}


@dataclass(frozen=True)
class LoadSpec:
    """How hard and how long to push: shared by the external tool and the Python generator."""

    clients: int = 50
    value_size: int = 100
    pipeline: int = 1
    keyspace: int = 10_000
    # Exactly one of requests/seconds bounds a run.
    requests: int | None = 100_000
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.clients < 1 or self.pipeline < 1 or self.keyspace < 1 or self.value_size < 0:
            raise ValueError("clients, pipeline and keyspace must be at least 1, value size at least 0")
        if (self.requests is None) == (self.seconds is None):
            raise ValueError("give either a request count or a duration, not both")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")

    @property
    def value(self) -> bytes:
        return b"x" * self.value_size

    def bound(self) -> str:
        return f"{self.requests} requests" if self.requests is not None else f"{self.seconds:g}s"


def key(index: int) -> bytes:
    return (KEY_FORMAT % index).encode()
