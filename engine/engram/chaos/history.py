"""The record of what chaos clients asked for and what they were told: one Operation per request."""

from __future__ import annotations

import base64
import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

FORMAT = "engram-history/1"


class HistoryError(ValueError):
    """A history record is malformed or cannot be checked."""


class Kind(StrEnum):
    """What an operation asked the database to do."""

    READ = "read"
    WRITE = "write"
    # value is (expected, new); a cas whose comparison failed is recorded as `fail`, it changed nothing.
    CAS = "cas"
    # value is the element appended to a list or set at `key`; checked by the loss checker only.
    APPEND = "append"


class Outcome(StrEnum):
    """What the client learned about the operation."""

    OK = "ok"
    # Definitely did not take effect (refused before execution, MOVED, READONLY, ...).
    FAIL = "fail"
    # Timeout or connection cut: it may take effect at any time after its invocation, or never.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Operation:
    """One client request: invoked at `invoke`, answered at `complete` (+inf if never answered)."""

    process: int | str
    key: str
    kind: Kind
    # write/append: the value sent; read: the value returned (None = key absent); cas: (expected, new).
    value: Any
    invoke: float
    complete: float
    outcome: Outcome

    def __post_init__(self) -> None:
        try:
            kind = Kind(self.kind)
            outcome = Outcome(self.outcome)
        except ValueError as exc:
            raise HistoryError(f"operation on key {self.key!r}: {exc}") from None
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "outcome", outcome)
        if outcome is Outcome.UNKNOWN:
            # An unanswered request stays open for ever: that is what "unknown" means to the checkers.
            object.__setattr__(self, "complete", math.inf)
        elif self.complete < self.invoke:
            raise HistoryError(
                f"operation on key {self.key!r} completes ({self.complete}) before it is invoked "
                f"({self.invoke}); record both times from the same monotonic clock"
            )
        if kind is Kind.CAS:
            if not isinstance(self.value, tuple | list) or len(self.value) != 2:
                raise HistoryError(f"cas on key {self.key!r} needs value (expected, new), got {self.value!r}")
            object.__setattr__(self, "value", tuple(self.value))

    def __str__(self) -> str:
        end = "..." if math.isinf(self.complete) else f"{self.complete}"
        who = f"p{self.process}" if isinstance(self.process, int) else self.process
        return f"{who} {self.kind} {self.key}={self.value!r} [{self.invoke}, {end}] {self.outcome}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `complete` is null for unknown operations."""
        return {
            "process": self.process,
            "key": self.key,
            "kind": str(self.kind),
            "value": _encode_value(self.value),
            "invoke": self.invoke,
            "complete": None if math.isinf(self.complete) else self.complete,
            "outcome": str(self.outcome),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        try:
            complete = data["complete"]
            return cls(
                process=data["process"],
                key=data["key"],
                kind=Kind(data["kind"]),
                value=_decode_value(data["value"]),
                invoke=data["invoke"],
                complete=math.inf if complete is None else complete,
                outcome=Outcome(data["outcome"]),
            )
        except (KeyError, ValueError) as exc:
            raise HistoryError(f"bad operation record {data!r}: {exc}") from None


@dataclass(slots=True)
class Pending:
    """An operation that has been invoked and not yet answered; hand it back to `History.complete`."""

    id: int
    process: int | str
    key: str
    kind: Kind
    value: Any
    invoke: float


_SAME: Any = object()


class History:
    """Thread- and asyncio-safe recorder of operations; appends are one short lock hold."""

    def __init__(
        self,
        operations: Iterable[Operation] = (),
        *,
        clock: Callable[[], float] = time.monotonic_ns,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self._ops: list[Operation] = list(operations)
        self._open: dict[int, Pending] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._clock = clock
        # Free-form run description saved with the history (seed, scenario, faults injected).
        self.meta: dict[str, Any] = dict(meta or {})

    def invoke(self, process: int | str, key: str, kind: Kind | str, value: Any = None) -> Pending:
        """Note the start of a request; take the time before the request is sent."""
        pending = Pending(next(self._ids), process, key, Kind(kind), value, self._clock())
        with self._lock:
            self._open[pending.id] = pending
        return pending

    def complete(self, pending: Pending, outcome: Outcome | str, value: Any = _SAME) -> Operation:
        """Note the answer; `value` is what a read returned (writes keep the value they sent)."""
        outcome = Outcome(outcome)
        now = math.inf if outcome is Outcome.UNKNOWN else self._clock()
        op = Operation(
            process=pending.process,
            key=pending.key,
            kind=pending.kind,
            value=pending.value if value is _SAME else value,
            invoke=pending.invoke,
            complete=now,
            outcome=outcome,
        )
        with self._lock:
            if self._open.pop(pending.id, None) is None:
                raise HistoryError(f"operation {pending} was already completed")
            self._ops.append(op)
        return op

    def ok(self, pending: Pending, value: Any = _SAME) -> Operation:
        return self.complete(pending, Outcome.OK, value)

    def fail(self, pending: Pending) -> Operation:
        return self.complete(pending, Outcome.FAIL)

    def unknown(self, pending: Pending) -> Operation:
        return self.complete(pending, Outcome.UNKNOWN)

    def record(self, op: Operation) -> None:
        """Append an operation built elsewhere (e.g. by a client that keeps its own clock)."""
        with self._lock:
            self._ops.append(op)

    def close(self) -> list[Operation]:
        """Mark every still-open operation unknown (a cancelled client never heard back)."""
        with self._lock:
            still_open = list(self._open.values())
        return [self.unknown(p) for p in still_open]

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    @property
    def operations(self) -> list[Operation]:
        """Completed operations, ordered by invocation time."""
        with self._lock:
            ops = list(self._ops)
        ops.sort(key=lambda op: op.invoke)
        return ops

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    def by_key(self) -> dict[str, list[Operation]]:
        """Operations grouped by key, each group ordered by invocation time."""
        groups: dict[str, list[Operation]] = {}
        for op in self.operations:
            groups.setdefault(op.key, []).append(op)
        return groups

    def select(self, predicate: Callable[[Operation], bool]) -> History:
        """A new history holding the operations `predicate` accepts (e.g. one workload's keys)."""
        return History((op for op in self.operations if predicate(op)), clock=self._clock, meta=self.meta)

    def to_json(self) -> str:
        payload = {
            "format": FORMAT,
            "meta": self.meta,
            "operations": [op.to_dict() for op in self.operations],
        }
        return json.dumps(payload, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> History:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"history is not valid JSON: {exc}") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise HistoryError(f"not an Engram history (expected format {FORMAT!r})")
        return cls((Operation.from_dict(d) for d in payload["operations"]), meta=payload.get("meta"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_json(Path(path).read_text())


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple | list):
        return [_encode_value(v) for v in value]
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return base64.b64decode(value["$bytes"])
    if isinstance(value, list):
        # JSON has no tuples; values must stay hashable for the checkers' model states.
        return tuple(_decode_value(v) for v in value)
    return value
