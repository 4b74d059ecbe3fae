"""What a benchmark run asks of each target: the workloads and the knobs shared by every generator."""

from __future__ import annotations

from dataclasses import dataclass

# valkey-benchmark/redis-benchmark name keys `key:` + a 12-digit number; the Python generators and the
# pre-population use the same names so GETs hit the same keys whichever generator runs.
KEY_FORMAT = "key:%012d"
# INCR needs integer values: counters live apart from the SET keys (as the tool's own `-t incr`).
COUNTER_FORMAT = "counter:%012d"
WRITES = ("SET", "INCR")


@dataclass(frozen=True)
class Workload:
    """A request mix: each request is a GET with probability read_fraction, else a write (SET or INCR)."""

    name: str
    read_fraction: float
    description: str
    write: str = "SET"

    def __post_init__(self) -> None:
        if self.write not in WRITES:
            raise ValueError(f"write must be one of {', '.join(WRITES)}, got {self.write!r}")
        if not 0.0 <= self.read_fraction <= 1.0:
            raise ValueError(f"read_fraction must be within [0, 1], got {self.read_fraction}")

    @property
    def key_format(self) -> str:
        return KEY_FORMAT if self.write == "SET" else COUNTER_FORMAT

    def key(self, index: int) -> bytes:
        return (self.key_format % index).encode()

    @property
    def needs_data(self) -> bool:
        """GETs must find values, so the keyspace is filled before the measured run (counters start empty)."""
        return self.read_fraction > 0 and self.write == "SET"


WORKLOADS: dict[str, Workload] = {
    "set": Workload("set", 0.0, "SET only"),
    "get": Workload("get", 1.0, "GET only (keys pre-populated)"),
    "mixed": Workload("mixed", 0.8, "80% GET / 20% SET"),
    "incr-get": Workload("incr-get", 0.25, "3 INCR : 1 GET on counters", write="INCR"),
}
# What `engram bench` runs when no workload is named.
DEFAULT_WORKLOADS = ("set", "get", "mixed")


@dataclass(frozen=True)
class LoadSpec:
    """How hard and how long to push: shared by the external tool and the Python generators."""

    clients: int = 50
    value_size: int = 100
    # Requests sent together, then all their replies awaited (a client's pipeline).
    pipeline: int = 1
    keyspace: int = 10_000
    # Exactly one of requests/seconds bounds a run.
    requests: int | None = 100_000
    seconds: float | None = None
    # Requests each connection keeps outstanding, a new one sent as each reply arrives: one multiplexed
    # connection, as valkey-glide uses. 1: request/reply (or pipelined batches).
    in_flight: int = 1

    def __post_init__(self) -> None:
        if self.clients < 1 or self.pipeline < 1 or self.keyspace < 1 or self.value_size < 0:
            raise ValueError("clients, pipeline and keyspace must be at least 1, value size at least 0")
        if self.in_flight < 1:
            raise ValueError(f"in-flight must be at least 1, got {self.in_flight}")
        if self.in_flight > 1 and self.pipeline > 1:
            raise ValueError("give either a pipeline (batches) or requests in flight (multiplexed), not both")
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

    def shape(self) -> str:
        """How the load is applied, for progress and the report: "4 clients x pipeline 16"."""
        clients = f"{self.clients} client{'s' if self.clients != 1 else ''}"
        if self.in_flight > 1:
            return f"{clients} x {self.in_flight} in flight"
        if self.pipeline > 1:
            return f"{clients} x pipeline {self.pipeline}"
        return clients


def key(index: int) -> bytes:
    return (KEY_FORMAT % index).encode()


def encode(*args: bytes) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def commands(workload: Workload, spec: LoadSpec) -> tuple[list[bytes], list[bytes]]:
    """Every key's write and GET, each encoded once: writes[i] and reads[i] touch the same key."""
    keys = [workload.key(i) for i in range(spec.keyspace)]
    if workload.write == "SET":
        value = spec.value
        writes = [encode(b"SET", k, value) for k in keys]
    else:
        writes = [encode(b"INCR", k) for k in keys]
    return writes, [encode(b"GET", k) for k in keys]
