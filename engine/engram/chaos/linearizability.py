"""Linearizability checker for single-key registers: Wing-Gong search with Lowe's improvements.

Each key is checked on its own (linearizability is compositional). The search walks the key's call
and return events in time order and linearizes operations "just in time": a read as soon as the
register holds its value, anything else only when some operation's return forces it. Configurations
(set of linearized operations, register value) are memoised so none is explored twice. Before the
search, an O(n log n) pass looks for the common anomaly, a read of a value certainly overwritten;
after a failed search, a binary search over prefixes finds the first return no order explains.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from engram.chaos.history import History, HistoryError, Kind, Operation, Outcome

# A linearizable history takes ~10 steps per operation (a few hundred thousand steps a second); the
# rest is room for the backtracking a violation causes, about half a minute at worst per key.
DEFAULT_MAX_STEPS = 20_000_000
DEFAULT_TIME_LIMIT = 300.0
# How much of the furthest partial linearization an explanation shows.
_TAIL = 8
_SHOWN = 16
_READ, _WRITE, _CAS = 0, 1, 2
_KIND_CODE = {Kind.READ: _READ, Kind.WRITE: _WRITE, Kind.CAS: _CAS}
# Stands for "no value needed" and for "a value no remaining operation looks at".
_NOTHING: Any = object()


class Verdict(StrEnum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not-linearizable"
    # The step or time budget ran out before the search finished.
    UNKNOWN = "unknown"


@dataclass
class KeyResult:
    """The verdict for one key, with what a human needs to find the anomaly when there is one."""

    key: str
    verdict: Verdict
    operations: int
    dropped: int
    steps: int
    elapsed: float
    # The first completion no linearization explains (for UNKNOWN: the furthest the search got).
    blocked: Operation | None = None
    # The operations that together cannot be linearized, in invocation order.
    involved: list[Operation] = field(default_factory=list)
    # Operations invoked before `blocked` returned: a prefix of the key's history already not
    # linearizable (the shortest such prefix when the search found it).
    prefix_operations: int = 0
    explanation: str = ""

    @property
    def linearizable(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE


@dataclass
class CheckResult:
    """Verdicts for every key of a history; linearizable only if every key is."""

    verdict: Verdict
    keys: dict[str, KeyResult]
    elapsed: float

    @property
    def linearizable(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    @property
    def failures(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if r.verdict is Verdict.NOT_LINEARIZABLE]

    @property
    def undecided(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if r.verdict is Verdict.UNKNOWN]

    def summary(self) -> str:
        ops = sum(r.operations for r in self.keys.values())
        lines = [f"{self.verdict}: {len(self.keys)} keys, {ops} operations checked in {self.elapsed:.2f}s"]
        lines += [r.explanation for r in self.failures + self.undecided]
        return "\n".join(lines)


def check(
    history: History | Iterable[Operation],
    *,
    initial: Any = None,
    initial_values: Mapping[str, Any] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> CheckResult:
    """Check every key of `history` as an independent read/write/cas register.

    `initial` is each register's value before the run (None = key absent), overridden per key by
    `initial_values`. `max_steps` bounds the search of each key, `time_limit` the whole check (seconds);
    a key whose search runs out gets verdict UNKNOWN rather than hanging.
    """
    started = time.monotonic()
    deadline = None if time_limit is None else started + time_limit
    groups: dict[str, list[Operation]] = {}
    for op in history.operations if isinstance(history, History) else history:
        groups.setdefault(op.key, []).append(op)
    overrides = initial_values or {}
    results = {
        key: check_key(
            key, groups[key], initial=overrides.get(key, initial), max_steps=max_steps, deadline=deadline
        )
        for key in sorted(groups)
    }
    verdicts = {r.verdict for r in results.values()}
    if Verdict.NOT_LINEARIZABLE in verdicts:
        verdict = Verdict.NOT_LINEARIZABLE
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.LINEARIZABLE
    return CheckResult(verdict, results, time.monotonic() - started)


def check_key(
    key: str,
    operations: Sequence[Operation],
    *,
    initial: Any = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    deadline: float | None = None,
) -> KeyResult:
    """Check one key's operations; `deadline` is a time.monotonic() instant."""
    started = time.monotonic()
    ops = _relevant(key, operations)
    result = KeyResult(key, Verdict.LINEARIZABLE, len(ops), len(operations) - len(ops), 0, 0.0)
    if not _explain_stale_read(result, ops, initial):
        search = _Search(ops, initial)
        result.verdict = search.run(max_steps, deadline)
        result.steps = search.steps
        if result.verdict is Verdict.NOT_LINEARIZABLE:
            search, blocked, shortest, spent = _shortest_failing_prefix(
                ops, initial, search, max_steps - result.steps, deadline
            )
            result.steps += spent
            search.explain(result, blocked, shortest)
        elif result.verdict is Verdict.UNKNOWN:
            search.explain(result)
    result.elapsed = time.monotonic() - started
    return result


def _shortest_failing_prefix(
    ops: list[Operation], initial: Any, failed: _Search, budget: int, deadline: float | None
) -> tuple[_Search, Operation, bool, int]:
    """Binary-search the shortest prefix, cut just after a return, that is already not linearizable.

    Linearizability is prefix-closed, so the failing cuts form a final range. Operations unanswered at
    the cut may or may not have taken effect: reads among them are dropped, writes become unknown.
    Returns the search of that prefix, the operation whose return ends it, whether the minimisation
    finished within `budget` steps (else it is just a failing prefix), and the steps spent.
    """
    ends = sorted((op for op in ops if not math.isinf(op.complete)), key=lambda op: op.complete)
    best, lo, hi, spent = failed, 0, len(ends) - 1, 0
    while lo < hi:
        mid = (lo + hi) // 2
        cut = ends[mid].complete
        prefix: list[Operation] = []
        originals: dict[int, Operation] = {}
        for op in ops:
            if op.invoke > cut:
                break
            if op.complete <= cut:
                prefix.append(op)
            elif op.kind is not Kind.READ:
                unanswered = replace(op, outcome=Outcome.UNKNOWN)
                originals[id(unanswered)] = op
                prefix.append(unanswered)
        search = _Search(_drop_unseen(prefix), initial, originals)
        verdict = search.run(budget - spent, deadline)
        spent += search.steps
        if verdict is Verdict.UNKNOWN:
            return best, ends[hi], False, spent
        if verdict is Verdict.NOT_LINEARIZABLE:
            best, hi = search, mid
        else:
            lo = mid + 1
    return best, ends[hi], True, spent


def _relevant(key: str, operations: Sequence[Operation]) -> list[Operation]:
    """The operations that constrain the register, in invocation order.

    Failed operations never happened and unanswered reads say nothing. An unanswered write whose value
    nothing compares against is dropped too: wherever it takes effect it is overwritten unseen.
    """
    ops: list[Operation] = []
    for op in operations:
        if op.key != key:
            raise HistoryError(f"operation {op} was passed to the check of key {key!r}")
        if op.kind not in _KIND_CODE:
            raise HistoryError(
                f"{op.kind} operation on key {key!r} is not a register operation; check appends with "
                "engram.chaos.loss and give the linearizability checker only read/write/cas keys"
            )
        if op.outcome is Outcome.FAIL or (op.outcome is Outcome.UNKNOWN and op.kind is Kind.READ):
            continue
        ops.append(op)
    try:
        for op in ops:
            hash(op.value)
    except TypeError as exc:
        raise HistoryError(f"key {key!r}: values must be hashable (str, bytes, int, tuple): {exc}") from None
    ops.sort(key=lambda op: op.invoke)
    return _drop_unseen(ops)


def _drop_unseen(ops: list[Operation]) -> list[Operation]:
    """Drop unanswered writes whose value no read or cas compares against."""
    while True:
        looked_at = {_expected(op) for op in ops if op.kind is not Kind.WRITE}
        kept = [op for op in ops if op.outcome is Outcome.OK or _written(op) in looked_at]
        if len(kept) == len(ops):
            return ops
        # Dropping an unanswered cas can leave the write it depended on unseen as well.
        ops = kept


def _expected(op: Operation) -> Any:
    """The value a read returned or a cas compared against."""
    return op.value[0] if op.kind is Kind.CAS else op.value


def _written(op: Operation) -> Any:
    """The value a write or cas left in the register."""
    return op.value[1] if op.kind is Kind.CAS else op.value


def _explain_stale_read(result: KeyResult, ops: list[Operation], initial: Any) -> bool:
    """Find the earliest-returning read whose value every candidate write had certainly lost.

    A write cannot explain a read if it began after the read returned, or if an answered write began
    after it returned and returned itself before the read began. O(n log n); fills `result` if found.
    """
    definite = sorted((op for op in ops if op.outcome is Outcome.OK and op.kind is not Kind.READ),
                      key=lambda op: op.invoke)
    starts = [op.invoke for op in definite]
    # earliest[i]: of the definite writes invoked at starts[i] or later, the one that returns first.
    earliest: list[Operation | None] = [None] * (len(definite) + 1)
    for i in range(len(definite) - 1, -1, -1):
        later = earliest[i + 1]
        earliest[i] = definite[i] if later is None or definite[i].complete <= later.complete else later
    # Per value: (start, certainly overwritten by then, writer or None for the initial value, overwriter).
    writers: dict[Any, list[tuple[float, float, Operation | None, Operation | None]]] = {}
    over = earliest[0]
    writers[initial] = [(-math.inf, over.complete if over else math.inf, None, over)]
    for op in ops:
        if op.kind is not Kind.READ:
            over = earliest[bisect_right(starts, op.complete)]
            entry = (op.invoke, over.complete if over else math.inf, op, over)
            writers.setdefault(_written(op), []).append(entry)
    index: dict[Any, tuple[list[float], list[float]]] = {}
    for value, candidates in writers.items():
        candidates.sort(key=lambda w: w[0])
        latest, running = -math.inf, []
        for w in candidates:
            latest = max(latest, w[1])
            running.append(latest)
        index[value] = ([w[0] for w in candidates], running)
    worst: Operation | None = None
    for op in ops:
        if op.outcome is not Outcome.OK or op.kind is Kind.WRITE:
            continue
        begun, running = index.get(_expected(op), ([], []))
        n = bisect_right(begun, op.complete)
        if (n == 0 or running[n - 1] < op.invoke) and (worst is None or op.complete < worst.complete):
            worst = op
    if worst is None:
        return False
    value = _expected(worst)
    lost = [w for w in writers.get(value, []) if w[0] <= worst.complete]
    result.verdict = Verdict.NOT_LINEARIZABLE
    result.blocked = worst
    result.prefix_operations = sum(1 for op in ops if op.invoke <= worst.complete)
    result.involved = _distinct([worst, *(op for w in lost[:_SHOWN] for op in w[2:] if op is not None)])
    lines = [
        f"key {result.key!r}: not linearizable. This {worst.kind} saw a value no write can have left there:",
        f"    {worst}",
    ]
    if not lost:
        lines.append(f"  nothing wrote {value!r} before it returned, and it is not the initial value")
    else:
        lines.append(f"  every write of {value!r} begun before it returned was overwritten before it began:")
        for _, _, writer, overwriter in lost[:_SHOWN]:
            lines.append(f"    {writer if writer else f'the initial value {initial!r}'}")
            lines.append(f"      overwritten by {overwriter}")
    result.explanation = "\n".join(lines)
    return True


def _distinct(ops: Iterable[Operation]) -> list[Operation]:
    """Each operation once, in invocation order (by identity: equal records may be distinct requests)."""
    unique = {id(op): op for op in ops}
    return sorted(unique.values(), key=lambda op: op.invoke)


class _Search:
    """The event list and the backtracking search over it for one key."""

    def __init__(
        self, ops: list[Operation], initial: Any, originals: dict[int, Operation] | None = None
    ) -> None:
        self.ops = ops
        self.initial = initial
        # Operations this search sees as copies (cut off by a prefix), by id of the copy.
        self.originals = originals or {}
        self.steps = 0
        n = len(ops)
        # Answered operations get bits in invocation order, so the linearized set is nearly a prefix
        # and is stored as (first unlinearized index, bits above it); unanswered ones get their own.
        self.unknown = [math.isinf(op.complete) for op in ops]
        self.bit = [0] * n
        answered = unanswered = 0
        for j in range(n):
            if self.unknown[j]:
                self.bit[j], unanswered = unanswered, unanswered + 1
            else:
                self.bit[j], answered = answered, answered + 1
        self.kind = [_KIND_CODE[op.kind] for op in ops]
        self.arg = [_expected(op) for op in ops]
        self.new = [_written(op) for op in ops]
        # Ties: a call sorts before a return at the same instant, so such operations count as concurrent.
        events = sorted(
            [(op.invoke, 0, j) for j, op in enumerate(ops)]
            + [(op.complete, 1, j) for j, op in enumerate(ops) if not self.unknown[j]]
        )
        m = len(events)
        self.tail = m + 1
        self.is_call = [False] * (m + 2)
        self.op_of = [-1] * (m + 2)
        self.match = [-1] * (m + 2)
        self.call_of = [0] * n
        for pos, (_, is_return, j) in enumerate(events, start=1):
            self.op_of[pos] = j
            if is_return:
                self.match[self.call_of[j]] = pos
            else:
                self.is_call[pos] = True
                self.call_of[j] = pos
        self.nxt = [*range(1, m + 2), self.tail]
        self.prv = [0, *range(0, m + 1)]
        # Per value, how many unlinearized operations compare the register against it (`observers`;
        # `needs` counts the answered ones, which must happen) and how many may still write it.
        self.observers: dict[Any, int] = {}
        self.needs: dict[Any, int] = {}
        self.writers: dict[Any, int] = {}
        for j in range(n):
            if self.kind[j] != _WRITE:
                self.observers[self.arg[j]] = self.observers.get(self.arg[j], 0) + 1
                if not self.unknown[j]:
                    self.needs[self.arg[j]] = self.needs.get(self.arg[j], 0) + 1
            if self.kind[j] != _READ:
                self.writers[self.new[j]] = self.writers.get(self.new[j], 0) + 1
        self.state: Any = initial
        self.low = self.rel = self.umask = 0
        self.cache: set[tuple[int, int, int, Any]] = set()
        # One frame per linearized operation: its call entry, what to restore, and for a choice the
        # candidates and the index taken (None for a read, which was no choice).
        self.frames: list[tuple[int, Any, int, int, int, list[int] | None, int]] = []
        # The furthest return the search reached, for the explanation.
        self.best_pos = -1
        self.best_state: Any = None
        self.best_depth = 0
        self.best_tail: list[int] = []
        self.best_pending: list[int] = []
        self.best_keep = False

    def run(self, max_steps: int, deadline: float | None) -> Verdict:
        """Search for a linearization; UNKNOWN if `max_steps` or `deadline` is reached first."""
        nxt, prv, is_call, op_of = self.nxt, self.prv, self.is_call, self.op_of
        kind, arg, tail = self.kind, self.arg, self.tail
        steps = 0
        # Looking at the clock every step would cost more than the step itself.
        check_at = min(max_steps, 4096)
        entry = nxt[0]
        while True:
            if steps >= check_at:
                if steps >= max_steps or (deadline is not None and time.monotonic() > deadline):
                    self.steps = steps
                    return Verdict.UNKNOWN
                check_at = min(max_steps, steps + 4096)
            # Scan forward taking every read the register answers right now: a read changes nothing,
            # so taking it as early as its call allows never rules out a linearization.
            stuck = False
            while entry != tail:
                steps += 1
                if not is_call[entry]:
                    break
                j = op_of[entry]
                if kind[j] == _READ and self.state == arg[j]:
                    if not self._take(entry, None, 0):
                        # Explored before and failed; this configuration differs only by the read.
                        stuck = True
                        break
                    # The lifted entry still points into the list; its predecessor now skips it.
                    entry = nxt[prv[entry]]
                    continue
                entry = nxt[entry]
            else:
                self.steps = steps
                return Verdict.LINEARIZABLE
            if not stuck:
                # `entry` returns unlinearized: something in flight must take effect now.
                if entry > self.best_pos:
                    self._note_furthest(entry)
                candidates = self._candidates(entry)
                steps += len(candidates)
                stuck = not self._try(candidates, 0)
            while stuck:
                if not self.frames:
                    self.steps = steps
                    return Verdict.NOT_LINEARIZABLE
                steps += 1
                candidates, taken = self._untake()
                # A read was taken without a choice (see above), so there is nothing else to try there.
                stuck = candidates is None or not self._try(candidates, taken + 1)
            entry = nxt[0]

    def _candidates(self, ret: int) -> list[int]:
        """Operations in flight that can take effect before `ret`'s: its own first, then writes of the
        value it needs, then other answered ones, then unanswered ones, each group in call order."""
        nxt, op_of, kind, arg, new, state = self.nxt, self.op_of, self.kind, self.arg, self.new, self.state
        unknown = self.unknown
        own = self.call_of[op_of[ret]]
        o = op_of[ret]
        needed = arg[o] if kind[o] != _WRITE and state != arg[o] else _NOTHING
        first: list[int] = []
        preferred: list[int] = []
        rest: list[int] = []
        optional: list[int] = []
        observed: set[Any] = set()
        # If something still has to see the current value and nothing left can write it again, the value
        # must stay until then: only an operation that looks at it may go next.
        keep = self.needs.get(state, 0) > 0 and self.writers.get(state, 0) == 0
        entry = nxt[0]
        while entry != ret and entry != self.tail:
            j = op_of[entry]
            k = kind[j]
            if k != _WRITE:
                observed.add(arg[j])
            if (k == _WRITE and not keep) or (k != _WRITE and state == arg[j]):
                if entry == own:
                    first.append(entry)
                elif new[j] == needed:
                    preferred.append(entry)
                elif unknown[j]:
                    optional.append(entry)
                else:
                    rest.append(entry)
            entry = nxt[entry]
        # An unanswered write need only be tried right before something that looks at what it wrote:
        # anywhere else it is overwritten unseen, which is the same as never happening.
        return first + preferred + rest + [e for e in optional if new[op_of[e]] in observed]

    def _try(self, candidates: list[int], start: int) -> bool:
        """Take the first candidate from `start` on whose resulting configuration is unexplored."""
        for i in range(start, len(candidates)):
            if self._take(candidates[i], candidates, i):
                return True
        return False

    def _take(self, entry: int, candidates: list[int] | None, index: int) -> bool:
        """Linearize the operation called at `entry`, unless that configuration was already explored."""
        j = self.op_of[entry]
        k = self.kind[j]
        state, low, rel, umask = self.state, self.low, self.rel, self.umask
        after = self.new[j]
        if self.unknown[j]:
            nlow, nrel, numask = low, rel, umask | (1 << self.bit[j])
        elif self.bit[j] == low:
            r = rel | 1
            shift = (~r & (r + 1)).bit_length() - 1
            nlow, nrel, numask = low + shift, r >> shift, umask
        else:
            nlow, nrel, numask = low, rel | (1 << (self.bit[j] - low)), umask
        observers = self.observers
        if k != _WRITE:
            observers[self.arg[j]] -= 1
        # A value nothing left compares against behaves like any other such value: merge them.
        config = (nlow, nrel, numask, after if observers.get(after, 0) > 0 else _NOTHING)
        if config in self.cache:
            if k != _WRITE:
                observers[self.arg[j]] += 1
            return False
        self.cache.add(config)
        if k != _WRITE and not self.unknown[j]:
            self.needs[self.arg[j]] -= 1
        if k != _READ:
            self.writers[after] -= 1
        self.frames.append((entry, state, low, rel, umask, candidates, index))
        self.state, self.low, self.rel, self.umask = after, nlow, nrel, numask
        # Lift the call and its return out of the list (dancing links; put back in reverse order).
        nxt, prv = self.nxt, self.prv
        nxt[prv[entry]] = nxt[entry]
        prv[nxt[entry]] = prv[entry]
        ret = self.match[entry]
        if ret >= 0:
            nxt[prv[ret]] = nxt[ret]
            prv[nxt[ret]] = prv[ret]
        return True

    def _untake(self) -> tuple[list[int] | None, int]:
        """Undo the last linearization; returns the candidates and index of the choice it made."""
        entry, self.state, self.low, self.rel, self.umask, candidates, index = self.frames.pop()
        nxt, prv = self.nxt, self.prv
        ret = self.match[entry]
        if ret >= 0:
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
        nxt[prv[entry]] = entry
        prv[nxt[entry]] = entry
        j = self.op_of[entry]
        if self.kind[j] != _WRITE:
            self.observers[self.arg[j]] += 1
            if not self.unknown[j]:
                self.needs[self.arg[j]] += 1
        if self.kind[j] != _READ:
            self.writers[self.new[j]] += 1
        return candidates, index

    def _note_furthest(self, ret: int) -> None:
        self.best_pos = ret
        self.best_state = self.state
        self.best_keep = self.needs.get(self.state, 0) > 0 and self.writers.get(self.state, 0) == 0
        self.best_depth = len(self.frames)
        self.best_tail = [self.op_of[frame[0]] for frame in self.frames[-_TAIL:]]
        pending: list[int] = []
        entry = self.nxt[0]
        while entry not in (ret, self.tail) and len(pending) < _SHOWN:
            pending.append(self.op_of[entry])
            entry = self.nxt[entry]
        self.best_pending = pending

    def _original(self, j: int) -> Operation:
        return self.originals.get(id(self.ops[j]), self.ops[j])

    def _keeper(self) -> Operation | None:
        """An answered operation, not yet linearized at the furthest point, that needs its value."""
        stuck = self.ops[self.op_of[self.best_pos]]
        waiting = [
            op for j, op in enumerate(self.ops)
            if self.kind[j] != _WRITE and not self.unknown[j] and self.arg[j] == self.best_state
            and op.complete >= stuck.complete
        ]
        return min(waiting, key=lambda op: op.invoke, default=None)

    def _why_not(self, j: int, keeper: Operation | None) -> str:
        k, expected, state = self.kind[j], self.arg[j], self.best_state
        if k == _READ and state != expected:
            return f"it read {expected!r} but the register holds {state!r}"
        if k == _CAS and state != expected:
            return f"it expected {expected!r} but the register holds {state!r}"
        if keeper is not None:
            return f"the register must keep {state!r} for {keeper}, and nothing left writes {state!r}"
        return "every order that places it here was explored and fails later"

    def explain(self, result: KeyResult, blocked: Operation | None = None, shortest: bool = False) -> None:
        """Fill in `result`'s explanation: `blocked`'s return ends a failing prefix (None: out of budget)."""
        if self.best_pos < 0:
            result.explanation = (
                f"key {result.key!r}: unknown: the search ran out of budget after {result.steps} steps "
                "before reaching any return; raise max_steps/time_limit or record fewer operations per key"
            )
            return
        stuck = self._original(self.op_of[self.best_pos])
        blocked = blocked or stuck
        tail = [self._original(j) for j in self.best_tail]
        pending = [self._original(j) for j in self.best_pending]
        keeper = self._keeper() if self.best_keep else None
        result.blocked = blocked
        result.involved = _distinct([blocked, stuck, *tail, *pending, *([keeper] if keeper else [])])
        result.prefix_operations = sum(1 for op in self.ops if op.invoke <= blocked.complete)
        if result.verdict is Verdict.NOT_LINEARIZABLE:
            which = "the shortest prefix" if shortest else "a prefix (finding the shortest ran out of budget)"
            head = (
                f"key {result.key!r}: not linearizable. The {result.prefix_operations} operation(s) invoked "
                f"before this one returned are {which} that is not:"
            )
        else:
            head = (
                f"key {result.key!r}: unknown: the search ran out of budget after {result.steps} steps "
                "(raise max_steps/time_limit or record fewer operations per key); it got as far as:"
            )
        lines = [
            head,
            f"    {blocked}",
            f"  the search got furthest with {self.best_depth} operation(s) linearized, leaving "
            f"{self.best_state!r}; the last ones:",
        ]
        lines += [f"    {op}" for op in tail] or ["    (none: the initial value)"]
        if stuck is not blocked:
            lines += ["  and then could not complete:", f"    {stuck}"]
        if pending:
            lines.append("  operations in flight that could not go next:")
            reasons = [self._why_not(j, keeper) for j in self.best_pending]
            lines += [f"    {op}  -- {why}" for op, why in zip(pending, reasons, strict=True)]
        result.explanation = "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Re-check a saved history: `python -m engram.chaos.linearizability run.json`."""
    parser = argparse.ArgumentParser(description="Check a saved Engram history for linearizability.")
    parser.add_argument("history", help="a history saved with History.save")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT)
    args = parser.parse_args(argv)
    history = History.load(args.history)
    registers = history.select(lambda op: op.kind is not Kind.APPEND)
    result = check(registers, max_steps=args.max_steps, time_limit=args.time_limit)
    print(result.summary())
    return 0 if result.linearizable else 1


if __name__ == "__main__":
    sys.exit(main())
