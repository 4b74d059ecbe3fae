"""The chaos workload: clients reading and writing a few register keys, plus write-once keys and appends.

Every write carries a value no other write uses, so a read names the write it saw. Register keys feed
the linearizability checker; write-once keys and list appends feed the acknowledged-write-loss checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engram.chaos.client import Answer, RoutedClient
from engram.chaos.history import History, Kind, Operation, Outcome

# After a failed or unknown operation, wait this long so a client does not spin on a dead node.
BACKOFF = 0.05
FINAL_READ_CONCURRENCY = 16
SAMPLES = 3


@dataclass(frozen=True)
class WorkloadSpec:
    """Key names, mix and pacing of one run."""

    prefix: str
    clients: int = 8
    keys: int = 5
    append_keys: int = 2
    # Fractions of operations; the rest are register reads.
    register_writes: float = 0.35
    unique_writes: float = 0.2
    appends: float = 0.1
    timeout: float = 5.0
    # Pause between a client's operations (0: as fast as answers come).
    think: float = 0.0
    seed: int = 0

    def register(self, k: int) -> str:
        return f"{self.prefix}:r:{k}"

    def unique(self, client: int | str, n: int) -> str:
        return f"{self.prefix}:u:{client}:{n}"

    def append_key(self, j: int) -> str:
        return f"{self.prefix}:a:{j}"

    @property
    def register_keys(self) -> list[str]:
        return [self.register(k) for k in range(self.keys)]

    def is_register(self, key: str) -> bool:
        return key.startswith(f"{self.prefix}:r:")


@dataclass
class ClientStats:
    """What the clients saw besides the history: redirects and error messages by kind."""

    redirects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # A few distinct messages per category, to tell a refusal from an unknown outcome in the report.
    samples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, answer: Answer) -> None:
        if answer.category:
            self.errors[answer.category] += 1
            seen = self.samples.setdefault(f"{answer.category} ({answer.outcome})", [])
            message = f"MOVED <slot> {answer.moved_to}" if answer.moved_to else answer.error
            if len(seen) < SAMPLES and message not in seen:
                seen.append(message)


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# The impatient writer: its process name in the history, how often it writes and how long it waits.
PROBE = "probe"
PROBE_EVERY = 0.1
PROBE_TIMEOUT = 0.5


async def run_probe(spec: WorkloadSpec, endpoint: str, history: History, stop: asyncio.Event) -> None:
    """A unique key every PROBE_EVERY with a PROBE_TIMEOUT timeout: its first write acknowledged after a
    fault shows when the shard served again, not when the other clients' longer timeouts ran out.
    Its writes are checked for loss like any other."""
    client = RoutedClient(endpoint, timeout=PROBE_TIMEOUT, connect_timeout=PROBE_TIMEOUT)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            key = spec.unique(PROBE, n)
            pending = history.invoke(PROBE, key, Kind.WRITE, str(n))
            answer = await client.call(key.encode(), b"SET", key.encode(), str(n).encode())
            history.complete(pending, answer.outcome)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_EVERY)
    finally:
        client.close()


async def run_client(
    index: int, spec: WorkloadSpec, endpoint: str, history: History, stop: asyncio.Event, stats: ClientStats
) -> None:
    """One client's loop until `stop` is set; every request is recorded in `history`."""
    rng = random.Random(f"{spec.seed}/{index}")
    client = RoutedClient(endpoint, timeout=spec.timeout)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            value = f"{index}-{n}"
            roll = rng.random()
            if roll < spec.register_writes:
                key = spec.register(rng.randrange(spec.keys))
                pending = history.invoke(index, key, Kind.WRITE, value)
                answer = await client.call(key.encode(), b"SET", key.encode(), value.encode())
                history.complete(pending, answer.outcome)
            elif roll < spec.register_writes + spec.unique_writes:
                key = spec.unique(index, n)
                pending = history.invoke(index, key, Kind.WRITE, value)
                answer = await client.call(key.encode(), b"SET", key.encode(), value.encode())
                history.complete(pending, answer.outcome)
            elif roll < spec.register_writes + spec.unique_writes + spec.appends:
                key = spec.append_key(rng.randrange(spec.append_keys))
                pending = history.invoke(index, key, Kind.APPEND, value)
                answer = await client.call(key.encode(), b"RPUSH", key.encode(), value.encode())
                history.complete(pending, answer.outcome)
            else:
                key = spec.register(rng.randrange(spec.keys))
                pending = history.invoke(index, key, Kind.READ, None)
                answer = await client.call(key.encode(), b"GET", key.encode())
                history.complete(pending, answer.outcome, _text(answer.value))
            stats.note(answer)
            if answer.outcome is not Outcome.OK:
                await asyncio.sleep(BACKOFF)
            elif spec.think:
                await asyncio.sleep(spec.think)
    finally:
        stats.redirects += client.redirects
        client.close()


async def read_final(
    spec: WorkloadSpec, endpoint: str, history: History, deadline: float
) -> dict[str, Any]:
    """Read back every key the run wrote, retrying each until answered or `deadline` (monotonic) passes.

    Register reads are recorded in `history` (process "final") so the checker sees them too.
    Returns key -> value (None when absent); append keys map to the list's elements.
    """
    keys = sorted({op.key for op in history.operations if op.kind in (Kind.WRITE, Kind.APPEND)})
    keys = sorted(set(keys) | set(spec.register_keys))
    appends = {spec.append_key(j) for j in range(spec.append_keys)}
    final: dict[str, Any] = {}
    queue = list(reversed(keys))
    unreadable: list[str] = []
    last_error = [""]

    async def reader() -> None:
        client = RoutedClient(endpoint, timeout=spec.timeout)
        try:
            while queue:
                key = queue.pop()
                while True:
                    register = spec.is_register(key)
                    pending = history.invoke("final", key, Kind.READ, None) if register else None
                    if key in appends:
                        answer = await client.call(key.encode(), b"LRANGE", key.encode(), b"0", b"-1")
                    else:
                        answer = await client.call(key.encode(), b"GET", key.encode())
                    if pending is not None:
                        history.complete(pending, answer.outcome, _text(answer.value))
                    if answer.outcome is Outcome.OK:
                        value = answer.value
                        final[key] = [_text(v) for v in value] if key in appends else _text(value)
                        break
                    if time.monotonic() >= deadline:
                        unreadable.append(key)
                        last_error[0] = answer.error
                        break
                    await asyncio.sleep(0.2)
        finally:
            client.close()

    await asyncio.gather(*(reader() for _ in range(FINAL_READ_CONCURRENCY)))
    if unreadable:
        raise FinalReadFailed(unreadable, last_error[0])
    return final


class FinalReadFailed(RuntimeError):
    """Some keys could not be read back after the run, so nothing can be concluded about them."""

    def __init__(self, keys: list[str], error: str) -> None:
        super().__init__(f"{len(keys)} keys could not be read after the run (first: {keys[:3]}, last "
                         f"error: {error}); the cluster did not recover, so loss cannot be judged")
        self.keys = keys


def loss_operations(history: History, spec: WorkloadSpec) -> list[Operation]:
    """The write-once and append operations: what the loss checker judges."""
    return [op for op in history.operations
            if not spec.is_register(op.key) and op.kind in (Kind.WRITE, Kind.APPEND)]
