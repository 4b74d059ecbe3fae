"""Specification of the chaos history model and the register linearizability checker."""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engram.chaos.history import History, HistoryError, Kind, Operation, Outcome
from engram.chaos.linearizability import Verdict, _relevant, _Search, check


def op(kind: str, value: Any, invoke: float, complete: float, outcome: str = "ok", *,
       process: int | str = 0, key: str = "k") -> Operation:
    return Operation(process, key, Kind(kind), value, invoke, complete, Outcome(outcome))


def write(value: Any, invoke: float, complete: float, outcome: str = "ok", **kw: Any) -> Operation:
    return op("write", value, invoke, complete, outcome, **kw)


def read(value: Any, invoke: float, complete: float, outcome: str = "ok", **kw: Any) -> Operation:
    return op("read", value, invoke, complete, outcome, **kw)


def cas(expected: Any, new: Any, invoke: float, complete: float, outcome: str = "ok", **kw: Any) -> Operation:
    return op("cas", (expected, new), invoke, complete, outcome, **kw)


UNANSWERED = math.inf


# --- histories that are linearizable ---------------------------------------------------------------


def test_sequential_writes_and_reads_are_linearizable() -> None:
    history = [write("a", 0, 1), read("a", 2, 3), write("b", 4, 5), read("b", 6, 7)]
    assert check(history).linearizable


@pytest.mark.parametrize("seen", [["a", "b"], ["b", "a"]])
def test_concurrent_writes_may_take_effect_in_either_order(seen: list[str]) -> None:
    first, last = seen
    history = [
        write("a", 0, 10, process=1),
        write("b", 1, 9, process=2),
        read(first, 2, 3, process=3),
        read(last, 4, 5, process=3),
        read(last, 11, 12, process=3),
    ]
    assert check(history).linearizable


@pytest.mark.parametrize("value", [None, "a"])
def test_read_concurrent_with_a_write_may_see_the_old_or_the_new_value(value: str | None) -> None:
    assert check([write("a", 0, 10, process=1), read(value, 1, 2, process=2)]).linearizable


def test_read_of_the_initial_none_before_any_write_is_linearizable() -> None:
    assert check([read(None, 0, 1), write("a", 2, 3), read("a", 4, 5)]).linearizable


def test_unknown_write_may_take_effect_long_after_it_was_invoked() -> None:
    history = [
        write("a", 0, 1, process=1),
        write("x", 2, UNANSWERED, "unknown", process=2),
        read("a", 3, 4, process=1),
        write("b", 5, 6, process=1),
        read("b", 7, 8, process=1),
        read("x", 100, 101, process=1),
    ]
    assert check(history).linearizable


def test_unknown_write_may_never_take_effect() -> None:
    history = [write("a", 0, 1), write("x", 2, UNANSWERED, "unknown", process=2), read("a", 50, 51)]
    assert check(history).linearizable


def test_failed_and_unknown_reads_constrain_nothing() -> None:
    history = [write("a", 0, 1), read("garbage", 2, 3, "fail"), read("junk", 4, UNANSWERED, "unknown")]
    result = check(history)
    assert result.linearizable
    assert result.keys["k"].dropped == 2


def test_successful_cas_takes_effect_between_its_invoke_and_complete() -> None:
    history = [write("a", 0, 1), cas("a", "b", 2, 5, process=1), read("a", 3, 4, process=2), read("b", 6, 7)]
    assert check(history).linearizable


def test_equal_timestamps_count_as_concurrent() -> None:
    # The read is invoked the instant the write returns: the clock cannot order them.
    assert check([write("a", 0, 5), read(None, 5, 6)]).linearizable


def test_initial_value_is_configurable_per_key() -> None:
    history = [read("x", 0, 1, key="k1"), read(None, 0, 1, key="k2")]
    assert check(history, initial_values={"k1": "x"}).linearizable
    assert not check(history).linearizable


# --- histories that are not ------------------------------------------------------------------------


def test_stale_read_after_a_completed_overwrite_is_not_linearizable() -> None:
    stale = read("a", 4, 5, process=2)
    overwrite = write("b", 2, 3)
    result = check([write("a", 0, 1), overwrite, stale])
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    key = result.keys["k"]
    assert key.blocked is stale
    assert any(o is overwrite for o in key.involved)
    assert "overwritten by" in key.explanation and "'a'" in key.explanation


def test_read_of_a_value_never_written_is_not_linearizable() -> None:
    result = check([write("a", 0, 1), read("zzz", 2, 3)])
    assert not result.linearizable
    assert "nothing wrote 'zzz'" in result.keys["k"].explanation


def test_read_of_a_failed_writes_value_is_not_linearizable() -> None:
    assert not check([write("x", 0, 1, "fail"), read("x", 2, 3)]).linearizable


def test_read_of_none_after_a_completed_write_is_not_linearizable() -> None:
    assert not check([write("a", 0, 1), read(None, 2, 3)]).linearizable


def test_new_then_old_inversion_between_two_reads_is_not_linearizable() -> None:
    # Both reads overlap the write of "b", but once one has seen "b", a later one cannot see "a".
    sees_new = read("b", 2, 3, process=2)
    sees_old = read("a", 4, 5, process=3)
    result = check([write("a", 0, 1, process=1), write("b", 1.5, 10, process=1), sees_new, sees_old])
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    key = result.keys["k"]
    assert key.blocked is sees_old
    assert key.prefix_operations == 4
    assert any(o is sees_new for o in key.involved)
    assert "the shortest prefix" in key.explanation
    assert f"the register must keep 'a' for {sees_old}" in key.explanation


def test_unknown_write_cannot_take_effect_before_it_was_invoked() -> None:
    assert not check([read("x", 0, 1), write("x", 2, UNANSWERED, "unknown")]).linearizable


def test_unknown_write_takes_effect_at_most_once() -> None:
    history = [
        write("x", 0, UNANSWERED, "unknown", process=1),
        read("x", 1, 2),
        write("y", 3, 4),
        read("x", 5, 6),
    ]
    assert not check(history).linearizable


def test_cas_cannot_succeed_when_the_register_holds_another_value() -> None:
    assert not check([write("c", 0, 1), cas("a", "b", 2, 3)]).linearizable


# --- keys, inputs and budget -------------------------------------------------------------------------


def test_keys_are_checked_independently() -> None:
    history = [
        write(1, 0, 1, key="a"),
        read(None, 2, 3, key="b"),  # absent: the write was to another key
        read(1, 4, 5, key="a"),
        write(2, 6, 7, key="b"),
        write(3, 8, 9, key="b"),
        read(2, 10, 11, key="b"),
    ]
    result = check(history)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.keys["a"].linearizable
    assert result.keys["b"].verdict is Verdict.NOT_LINEARIZABLE
    assert [r.key for r in result.failures] == ["b"]


def test_appends_are_refused_with_a_pointer_to_the_loss_checker() -> None:
    with pytest.raises(HistoryError, match=r"engram\.chaos\.loss"):
        check([op("append", "e1", 0, 1)])


def test_search_out_of_budget_says_unknown_rather_than_guessing() -> None:
    history, _ = simulated_register(seed=7, operations=3000, processes=10)
    by_steps = check(history, max_steps=1000)
    assert by_steps.verdict is Verdict.UNKNOWN and not by_steps.linearizable
    assert "budget" in by_steps.keys["k"].explanation
    by_time = check(history, time_limit=0)
    assert by_time.verdict is Verdict.UNKNOWN
    assert check(history).linearizable


# --- randomized: histories of a register that really ran ---------------------------------------------


@st.composite
def executed_histories(draw: st.DrawFn) -> list[Operation]:
    """Operations that really took effect one at a time, at t = 10, 20, 30, ...; each was invoked
    some time before that instant and answered some time after, so intervals overlap at random."""
    ops: list[Operation] = []
    register: int | None = None
    fresh = itertools.count(1)
    for i in range(draw(st.integers(1, 40))):
        at = 10 * (i + 1)
        invoke = at - draw(st.integers(0, 35))
        complete = at + draw(st.integers(0, 35))
        kind = draw(st.sampled_from(["read", "write", "cas", "unanswered", "lost", "refused"]))
        if kind == "read":
            ops.append(read(register, invoke, complete, process=i))
        elif kind == "write":
            register = next(fresh)
            ops.append(write(register, invoke, complete, process=i))
        elif kind == "cas":
            expected, register = register, next(fresh)
            ops.append(cas(expected, register, invoke, complete, process=i))
        elif kind == "unanswered":  # took effect, but the client never heard
            register = next(fresh)
            ops.append(write(register, invoke, UNANSWERED, "unknown", process=i))
        elif kind == "lost":  # never took effect, and the client never heard
            ops.append(write(next(fresh), invoke, UNANSWERED, "unknown", process=i))
        else:  # refused before execution
            ops.append(write(next(fresh), invoke, complete, "fail", process=i))
    return ops


@settings(max_examples=300, deadline=None)
@given(executed_histories())
def test_histories_of_a_register_that_really_ran_are_linearizable(history: list[Operation]) -> None:
    result = check(history)
    assert result.linearizable, result.summary()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(executed_histories(), st.data())
def test_reading_a_value_overwritten_before_the_read_began_is_not_linearizable(
    history: list[Operation], data: st.DataObject
) -> None:
    definite = [o for o in history if o.outcome is Outcome.OK and o.kind is not Kind.READ]
    written = {o.value[1] if o.kind is Kind.CAS else o.value: o for o in definite}
    stale: list[tuple[int, Any]] = []
    for i, r in enumerate(history):
        if r.kind is not Kind.READ:
            continue
        # An overwrite that began after the old write returned and returned before the read began.
        for value, old in [*written.items(), (None, None)]:
            old_end = -math.inf if old is None else old.complete
            if value != r.value and any(old_end < x.invoke and x.complete < r.invoke for x in definite):
                stale.append((i, value))
    assume(stale)
    i, value = data.draw(st.sampled_from(stale))
    r = history[i]
    history[i] = read(value, r.invoke, r.complete, process=r.process)
    result = check(history)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.keys["k"].blocked is not None


# --- randomized: agreement with exhaustive search on small histories ---------------------------------


def exhaustively_linearizable(history: list[Operation], initial: Any = None) -> bool:
    """Try every order of every choice of which unanswered operations took effect."""
    required = [o for o in history if o.outcome is Outcome.OK]
    optional = [o for o in history if o.outcome is Outcome.UNKNOWN and o.kind is not Kind.READ]
    for size in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, size):
            for order in itertools.permutations(required + list(chosen)):
                if any(b.complete < a.invoke for a, b in itertools.combinations(order, 2)):
                    continue  # b returned before a was invoked, yet comes after it
                register, possible = initial, True
                for o in order:
                    if o.kind is Kind.READ:
                        possible = register == o.value
                    elif o.kind is Kind.WRITE:
                        register = o.value
                    else:
                        possible = register == o.value[0]
                        register = o.value[1]
                    if not possible:
                        break
                if possible:
                    return True
    return False


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to 7 operations over few values and a short clock, so ties, duplicates and overlap abound."""
    values = st.sampled_from(["a", "b", "c"])
    ops = []
    for i in range(draw(st.integers(1, 7))):
        invoke = draw(st.integers(0, 12))
        complete = invoke + draw(st.integers(0, 6))
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "unknown", "fail"]))
        kind = draw(st.sampled_from(["read", "write", "cas"]))
        if kind == "read":
            value = draw(st.none() | values)
        elif kind == "write":
            value = draw(values)
        else:
            value = (draw(st.none() | values), draw(values))
        ops.append(op(kind, value, invoke, complete, outcome, process=i))
    return ops


@settings(max_examples=400, deadline=None)
@given(small_histories(), st.sampled_from([None, "a"]))
def test_verdict_agrees_with_exhaustive_search_on_small_histories(
    history: list[Operation], initial: Any
) -> None:
    assert check(history, initial=initial).linearizable == exhaustively_linearizable(history, initial)


@settings(max_examples=400, deadline=None)
@given(small_histories(), st.sampled_from([None, "a"]))
def test_search_alone_agrees_with_exhaustive_search(history: list[Operation], initial: Any) -> None:
    # check() answers most violations with its stale-read pass; make sure the search needs no help.
    verdict = _Search(_relevant("k", history), initial).run(max_steps=10**6, deadline=None)
    assert (verdict is Verdict.LINEARIZABLE) == exhaustively_linearizable(history, initial)


# --- performance -------------------------------------------------------------------------------------


def simulated_register(seed: int, operations: int, processes: int) -> tuple[list[Operation], int | None]:
    """Clients each doing one request at a time against a register that applies each request at a
    random instant inside it; half reads, half writes of unique values. Returns the final value too."""
    rng = random.Random(seed)
    free_at = [rng.uniform(0, 1) for _ in range(processes)]
    planned: list[tuple[float, int, str, int, float, float]] = []
    for n in range(operations):
        p = min(range(processes), key=free_at.__getitem__)
        invoke = free_at[p]
        complete = invoke + rng.expovariate(1.0)
        kind = "read" if rng.random() < 0.5 else "write"
        planned.append((rng.uniform(invoke, complete), p, kind, n, invoke, complete))
        free_at[p] = complete + rng.expovariate(5.0)
    register: int | None = None
    ops = []
    for _, p, kind, n, invoke, complete in sorted(planned):
        if kind == "write":
            register = n
        ops.append(op(kind, register, invoke, complete, process=p))
    return ops, register


def test_two_thousand_operations_at_concurrency_ten_are_checked_in_seconds() -> None:
    history, final = simulated_register(seed=1, operations=2000, processes=10)
    started = time.monotonic()
    result = check(history, max_steps=50_000_000)
    elapsed = time.monotonic() - started
    assert result.linearizable, result.summary()
    assert elapsed < 30, f"2000 operations took {elapsed:.1f}s"

    # Once all that is over, a write of "x" overlaps two reads: one sees "x", the next the old value.
    end = max(o.complete for o in history) + 1
    inversion = [
        write("x", end, end + 10, process="w"),
        read("x", end + 1, end + 2, process="r1"),
        read(final, end + 3, end + 4, process="r2"),
    ]
    started = time.monotonic()
    result = check(history + inversion, max_steps=50_000_000)
    elapsed = time.monotonic() - started
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.keys["k"].blocked is inversion[2]
    assert elapsed < 30, f"2000 operations with a violation took {elapsed:.1f}s"
    assert check(history + inversion[:2]).linearizable


# --- the history recorder ----------------------------------------------------------------------------


def test_recorder_notes_invoke_and_answer_and_keeps_writes_value() -> None:
    ticks = itertools.count(10)
    history = History(clock=lambda: next(ticks))
    w = history.invoke(1, "k", Kind.WRITE, "v")
    r = history.invoke(2, "k", Kind.READ)
    history.ok(r, "v")
    history.ok(w)
    lost = history.invoke(3, "k", Kind.WRITE, "u")
    history.unknown(lost)
    assert [(o.process, o.kind, o.value, o.invoke, o.complete, o.outcome) for o in history] == [
        (1, Kind.WRITE, "v", 10, 13, Outcome.OK),
        (2, Kind.READ, "v", 11, 12, Outcome.OK),
        (3, Kind.WRITE, "u", 14, math.inf, Outcome.UNKNOWN),
    ]


def test_operations_still_open_at_the_end_become_unknown() -> None:
    history = History()
    history.invoke(1, "k", Kind.WRITE, "v")
    assert history.open_count == 1
    [closed] = history.close()
    assert closed.outcome is Outcome.UNKNOWN and math.isinf(closed.complete)
    assert history.open_count == 0


def test_recorder_is_safe_to_share_between_threads() -> None:
    history = History()

    def client(n: int) -> None:
        for i in range(500):
            history.ok(history.invoke(n, f"k{i % 3}", Kind.WRITE, f"{n}:{i}"))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(history) == 4000
    assert sorted(len(ops) for ops in history.by_key().values()) == [1328, 1336, 1336]


def test_saved_history_reloads_and_rechecks_to_the_same_verdict(tmp_path: Any) -> None:
    history = History(
        [
            write(b"\x00raw", 0, 1),
            read(b"\x00raw", 2, 3, process="final"),
            cas(b"\x00raw", "b", 4, UNANSWERED, "unknown"),
            write("c", 5, 6, "fail", key="other"),
            read("b", 7, 8, key="k"),
        ],
        meta={"seed": 42},
    )
    path = tmp_path / "run.json"
    history.save(path)
    again = History.load(path)
    assert again.operations == history.operations
    assert again.meta == {"seed": 42}
    assert check(again).verdict == check(history).verdict == Verdict.LINEARIZABLE


def test_operation_that_completes_before_it_is_invoked_is_rejected() -> None:
    with pytest.raises(HistoryError, match="before it is invoked"):
        write("a", 5, 4)
