"""How the journal's refusals map onto Engram's error types: what a caller may retry."""

from __future__ import annotations

from engram.journal.client import _refusal
from engram.journal.errors import Fenced, JournalError, JournalTimeout, NoQuorum


def test_a_retry_refused_while_its_first_try_is_in_process_is_an_unknown_outcome_to_retry() -> None:
    # Seen under chaos: a snapshot chunk's retry refused with 10158 failed the whole upload.
    error = _refusal(400, 10158, "duplicate message id is in process", None)
    assert isinstance(error, JournalTimeout) and "still processing" in str(error)


def test_other_refusals_keep_their_meaning() -> None:
    fenced = _refusal(400, 10071, "wrong last sequence: 42", 40)
    assert isinstance(fenced, Fenced) and (fenced.expected, fenced.actual) == (40, 42)
    assert isinstance(_refusal(503, 0, "no responders", None), NoQuorum)
    other = _refusal(400, 10999, "something else", None)
    assert type(other) is JournalError and "code 10999" in str(other)
