"""Acknowledged-write-loss checker: every write a client was told succeeded must still be there.

Two workloads are understood. Unique writes: each key (e.g. `u:<client>:<n>`) is written once with
its own value and read back at the end. Appends: unique elements appended to a list or set key and the
whole collection read back. Retries of the same write (same key and value/element) are allowed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engram.chaos.history import History, HistoryError, Kind, Operation, Outcome


@dataclass(frozen=True)
class LostWrite:
    """An acknowledged write that is absent at the end, or was replaced by a value nobody wrote."""

    op: Operation
    # What was read back instead: None when absent (always None for appends).
    found: Any = None

    def __str__(self) -> str:
        seen = "absent" if self.found is None else f"found {self.found!r}"
        return f"{self.op}: {seen}"


@dataclass
class LossReport:
    """What the final read-back says about every write; `ok` is False on any durability violation."""

    acknowledged: int
    lost: list[LostWrite] = field(default_factory=list)
    # Writes the client was told definitely did not happen, yet they are there.
    failed_but_present: list[Operation] = field(default_factory=list)
    # (key, value) read back that no client ever tried to write.
    unexpected: list[tuple[str, Any]] = field(default_factory=list)
    # (key, element, times present): appended fewer times than it appears, e.g. a journal entry applied twice.
    duplicated: list[tuple[str, Any, int]] = field(default_factory=list)
    # Informational: writes whose client never heard back, split by whether they took effect.
    unknown_landed: list[Operation] = field(default_factory=list)
    unknown_missing: list[Operation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.failed_but_present or self.unexpected or self.duplicated)

    def summary(self) -> str:
        lines = [
            f"{'ok' if self.ok else 'WRITES LOST OR INVENTED'}: {self.acknowledged} acknowledged, "
            f"{len(self.lost)} lost; unknown outcome: {len(self.unknown_landed)} landed, "
            f"{len(self.unknown_missing)} did not"
        ]
        lines += [f"  lost: {w}" for w in self.lost]
        lines += [f"  failed but present: {op}" for op in self.failed_but_present]
        lines += [f"  unexpected: {key}={value!r}" for key, value in self.unexpected]
        lines += [f"  duplicated: {key} holds {value!r} {n} times" for key, value, n in self.duplicated]
        return "\n".join(lines)


@dataclass
class _Attempts:
    """Every operation that tried to write one (key, value) identity."""

    ok: list[Operation] = field(default_factory=list)
    unknown: list[Operation] = field(default_factory=list)
    fail: list[Operation] = field(default_factory=list)

    def add(self, op: Operation) -> None:
        {Outcome.OK: self.ok, Outcome.UNKNOWN: self.unknown, Outcome.FAIL: self.fail}[op.outcome].append(op)


def check_loss(history: History | Iterable[Operation], final: Mapping[str, Any]) -> LossReport:
    """Compare the writes and appends in `history` with `final`, the state read back after the run.

    `final` maps each workload key to its value (missing or None = absent) or, for append keys, to the
    collection of elements read back. Reads and cas operations in the history are ignored.
    """
    ops = history.operations if isinstance(history, History) else list(history)
    writes: dict[str, dict[Any, _Attempts]] = {}
    appends: dict[str, dict[Any, _Attempts]] = {}
    for op in ops:
        if op.kind is Kind.WRITE:
            writes.setdefault(op.key, {}).setdefault(op.value, _Attempts()).add(op)
        elif op.kind is Kind.APPEND:
            appends.setdefault(op.key, {}).setdefault(op.value, _Attempts()).add(op)
    for key, values in writes.items():
        if len(values) > 1:
            raise HistoryError(
                f"key {key!r} was written with {len(values)} different values; the loss checker needs "
                "one value per key (use a fresh key per write, e.g. u:<client>:<n>)"
            )
    both = writes.keys() & appends.keys()
    if both:
        raise HistoryError(f"keys {sorted(both)!r} were both written and appended to")

    report = LossReport(acknowledged=0)
    for key, values in writes.items():
        found = final.get(key)
        for value, attempts in values.items():
            _judge(report, attempts, present=found == value, found=found)
            if found is not None and found != value:
                report.unexpected.append((key, found))
    for key, elements in appends.items():
        counts = Counter(final.get(key) or ())
        for element, attempts in elements.items():
            _judge(report, attempts, present=counts[element] > 0, found=None)
            # A retried append may land once per attempt that could have taken effect, no more.
            allowed = len(attempts.ok) + len(attempts.unknown)
            if counts[element] > max(allowed, 1):
                report.duplicated.append((key, element, counts[element]))
        report.unexpected += [(key, e) for e in counts if e not in elements]
    for key in final.keys() - writes.keys() - appends.keys():
        value = final[key]
        if value is not None and value != () and value != []:
            report.unexpected.append((key, value))
    return report


def _judge(report: LossReport, attempts: _Attempts, *, present: bool, found: Any) -> None:
    """File one written identity under acknowledged/lost, failed-but-present or unknown."""
    if attempts.ok:
        report.acknowledged += 1
        if not present:
            report.lost.append(LostWrite(attempts.ok[0], found))
    elif attempts.unknown:
        (report.unknown_landed if present else report.unknown_missing).append(attempts.unknown[0])
    elif present:
        report.failed_but_present.append(attempts.fail[0])
