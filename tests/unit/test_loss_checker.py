"""Specification of the acknowledged-write-loss checker."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engram.chaos.history import History, HistoryError, Kind, Operation, Outcome
from engram.chaos.loss import check_loss

_clock = itertools.count()


def put(key: str, value: Any, outcome: str = "ok", *, process: int = 0) -> Operation:
    """A unique write, e.g. u:<client>:<n> = <value>."""
    invoke = next(_clock)
    complete = math.inf if outcome == "unknown" else invoke + 1
    return Operation(process, key, Kind.WRITE, value, invoke, complete, Outcome(outcome))


def append(key: str, element: Any, outcome: str = "ok") -> Operation:
    invoke = next(_clock)
    complete = math.inf if outcome == "unknown" else invoke + 1
    return Operation(0, key, Kind.APPEND, element, invoke, complete, Outcome(outcome))


# --- unique writes -----------------------------------------------------------------------------------


def test_nothing_is_lost_when_every_acknowledged_write_reads_back() -> None:
    writes = [put("u:1:1", "a"), put("u:1:2", "b"), put("u:2:1", "c")]
    report = check_loss(writes, {"u:1:1": "a", "u:1:2": "b", "u:2:1": "c"})
    assert report.ok
    assert report.acknowledged == 3
    assert report.lost == []


def test_acknowledged_write_missing_at_the_end_is_lost() -> None:
    kept, gone = put("u:1:1", "a"), put("u:1:2", "b")
    report = check_loss([kept, gone], {"u:1:1": "a"})
    assert not report.ok
    assert [w.op for w in report.lost] == [gone]
    assert report.lost[0].found is None
    assert "u:1:2" in report.summary() and "absent" in report.summary()


def test_absent_can_also_be_read_back_as_none() -> None:
    gone = put("u:1:1", "a")
    assert [w.op for w in check_loss([gone], {"u:1:1": None}).lost] == [gone]


def test_acknowledged_write_replaced_by_a_value_nobody_wrote_is_lost_and_the_value_unexpected() -> None:
    overwritten = put("u:1:1", "a")
    report = check_loss([overwritten], {"u:1:1": "garbage"})
    assert [(w.op, w.found) for w in report.lost] == [(overwritten, "garbage")]
    assert report.unexpected == [("u:1:1", "garbage")]


def test_unknown_writes_are_sorted_into_landed_and_missing_without_failing_the_check() -> None:
    landed, missing = put("u:1:1", "a", "unknown"), put("u:1:2", "b", "unknown")
    report = check_loss([landed, missing], {"u:1:1": "a"})
    assert report.ok
    assert report.acknowledged == 0
    assert report.unknown_landed == [landed]
    assert report.unknown_missing == [missing]


def test_write_refused_as_failed_that_is_present_anyway_is_a_violation() -> None:
    refused = put("u:1:1", "a", "fail")
    report = check_loss([refused], {"u:1:1": "a"})
    assert not report.ok
    assert report.failed_but_present == [refused]
    assert check_loss([refused], {}).ok


def test_key_nobody_wrote_is_unexpected_unless_absent() -> None:
    assert check_loss([], {"u:9:9": "x"}).unexpected == [("u:9:9", "x")]
    assert check_loss([], {"u:9:9": None, "list": []}).ok


def test_retried_write_is_acknowledged_once_if_any_attempt_was() -> None:
    attempts = [put("u:1:1", "a", "unknown"), put("u:1:1", "a", "fail"), put("u:1:1", "a")]
    report = check_loss(attempts, {})
    assert report.acknowledged == 1
    assert [w.op for w in report.lost] == [attempts[2]]
    assert report.unknown_missing == []


def test_key_written_with_two_different_values_is_refused() -> None:
    with pytest.raises(HistoryError, match="fresh key per write"):
        check_loss([put("u:1:1", "a"), put("u:1:1", "b")], {})


def test_reads_and_cas_in_the_history_are_ignored() -> None:
    others = [
        Operation(0, "u:1:1", Kind.READ, "zzz", 0, 1, Outcome.OK),
        Operation(0, "u:1:1", Kind.CAS, ("a", "b"), 0, 1, Outcome.OK),
    ]
    assert check_loss([put("u:1:1", "a"), *others], {"u:1:1": "a"}).ok


def test_takes_a_recorded_history() -> None:
    history = History()
    history.ok(history.invoke(1, "u:1:1", Kind.WRITE, "a"))
    history.unknown(history.invoke(1, "u:1:2", Kind.WRITE, "b"))
    report = check_loss(history, {"u:1:2": "b"})
    assert [w.op.key for w in report.lost] == ["u:1:1"]
    assert [op.key for op in report.unknown_landed] == ["u:1:2"]


# --- appends -----------------------------------------------------------------------------------------


def test_acknowledged_append_missing_from_the_collection_is_lost() -> None:
    kept, gone = append("list", "e1"), append("list", "e2")
    report = check_loss([kept, gone], {"list": ["e1"]})
    assert [w.op for w in report.lost] == [gone]


def test_append_present_twice_is_duplicated() -> None:
    report = check_loss([append("list", "e1")], {"list": ["e1", "e1"]})
    assert not report.ok
    assert report.duplicated == [("list", "e1", 2)]


def test_retried_append_may_appear_once_per_attempt_that_could_have_landed() -> None:
    attempts = [append("list", "e1", "unknown"), append("list", "e1")]
    assert check_loss(attempts, {"list": ["e1", "e1"]}).ok
    assert check_loss(attempts, {"list": ["e1", "e1", "e1"]}).duplicated == [("list", "e1", 3)]


def test_element_nobody_appended_is_unexpected() -> None:
    report = check_loss([append("set", "e1")], {"set": {"e1", "stray"}})
    assert report.unexpected == [("set", "stray")]


def test_key_both_written_and_appended_to_is_refused() -> None:
    with pytest.raises(HistoryError, match="both written and appended"):
        check_loss([put("k", "a"), append("k", "e")], {})


# --- randomized --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ok", "fail", "unknown"]), st.booleans()), max_size=60))
def test_lost_writes_are_exactly_the_acknowledged_ones_missing_from_the_read_back(
    plan: list[tuple[str, bool]],
) -> None:
    """Each write has an outcome and either survives to the read-back or not."""
    writes = [put(f"u:{n % 4}:{n}", f"v{n}", outcome, process=n % 4) for n, (outcome, _) in enumerate(plan)]
    final = {w.key: w.value for w, (_, survives) in zip(writes, plan, strict=True) if survives}
    report = check_loss(writes, final)

    def chosen(outcome: str, survives: bool) -> list[Operation]:
        return [w for w, p in zip(writes, plan, strict=True) if p == (outcome, survives)]

    assert [w.op for w in report.lost] == chosen("ok", False)
    assert report.acknowledged == len(chosen("ok", True)) + len(chosen("ok", False))
    assert report.unknown_landed == chosen("unknown", True)
    assert report.unknown_missing == chosen("unknown", False)
    assert report.failed_but_present == chosen("fail", True)
    assert report.ok == (not chosen("ok", False) and not chosen("fail", True))
