"""The gauges a node samples: its shard's snapshot age, its journal stream's size and reach, and the
module's commit waits."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import REGISTRY

from engram import metrics
from engram.journal.client import StreamState
from engram.journal.errors import NoQuorum
from engram.node.gauges import commit_waits, sample_journal, snapshot_age, track_snapshots
from engram.snapshots.record import Position, SnapshotRecord
from engram.snapshots.schedule import SnapshotPolicy


def record(created_at: float) -> SnapshotRecord:
    return SnapshotRecord("cid", 0, Position(10, 0, 1, 0), "digest", "sha", 100, 1, "1.0.0", "9.0.0",
                          created_at, verified=True)


def sample(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


class FakeJournal:
    """A journal whose stream state is a scripted answer, an error, or no answer at all."""

    def __init__(self, answer: StreamState | Exception | None) -> None:
        self.answer = answer

    async def state(self) -> StreamState:
        if self.answer is None:
            await asyncio.Event().wait()  # a journal that never answers
        if isinstance(self.answer, Exception):
            raise self.answer
        assert isinstance(self.answer, StreamState)
        return self.answer


def test_a_shard_without_a_snapshot_has_no_age_rather_than_a_fresh_one() -> None:
    assert math.isnan(snapshot_age(None, 1_000.0))


def test_snapshot_age_counts_from_when_it_was_taken_and_never_goes_below_zero() -> None:
    assert snapshot_age(record(900.0), 1_000.0) == 100.0
    assert snapshot_age(record(1_002.0), 1_000.0) == 0.0  # taken by a host whose clock runs ahead


def test_the_exported_age_follows_the_newest_snapshot_at_each_scrape() -> None:
    newest: list[SnapshotRecord | None] = [None]
    track_snapshots(lambda: newest[0], SnapshotPolicy(interval=600.0))
    assert sample("engram_snapshot_interval_seconds") == 600.0
    age = sample("engram_snapshot_age_seconds")
    assert age is not None and math.isnan(age)
    newest[0] = record(0.0)  # a snapshot taken in 1970: its age is the wall clock itself
    age = sample("engram_snapshot_age_seconds")
    assert age is not None and age > 1_700_000_000


def _journal_gauges() -> tuple[float | None, float | None, float | None]:
    names = ("engram_journal_reachable", "engram_journal_entries", "engram_journal_bytes")
    reachable, entries, size = (sample(name) for name in names)
    return reachable, entries, size


def test_a_stream_that_answers_with_a_leader_is_reachable_and_reports_its_size() -> None:
    asyncio.run(sample_journal(FakeJournal(StreamState(500, 1_499, 1_000, 64_000)), 1.0))  # type: ignore[arg-type]
    assert _journal_gauges() == (1.0, 1_000.0, 64_000.0)


def test_a_leaderless_stream_is_unreachable_though_a_member_still_reports_its_size() -> None:
    state = StreamState(1, 20, 20, 2_000, has_leader=False)
    asyncio.run(sample_journal(FakeJournal(state), 1.0))  # type: ignore[arg-type]
    assert _journal_gauges() == (0.0, 20.0, 2_000.0)


@pytest.mark.parametrize("answer", [NoQuorum("no journal server answered"), None], ids=["refused", "silent"])
def test_a_journal_that_refuses_or_stays_silent_is_unreachable_and_keeps_the_last_size(
    answer: Exception | None,
) -> None:
    asyncio.run(sample_journal(FakeJournal(StreamState(1, 7, 7, 700)), 1.0))  # type: ignore[arg-type]
    asyncio.run(sample_journal(FakeJournal(answer), 0.05))  # type: ignore[arg-type]
    assert _journal_gauges() == (0.0, 7.0, 700.0)


INFO = (b"active:1\r\ncommitted_offset:900\r\ncommit_waits:3\r\ncommit_wait_us_sum:7500\r\n"
        b"commit_wait_us_buckets:250=0,1000=1,5000=3,inf=3\r\nmanaged:1\r\n")


def test_the_modules_commit_waits_are_exported_as_a_histogram_in_seconds() -> None:
    sampled = commit_waits(INFO)
    assert sampled == ([("0.00025", 0.0), ("0.001", 1.0), ("0.005", 3.0), ("+Inf", 3.0)], 0.0075)
    metrics.REPLY_COMMIT_WAIT.update(*sampled)
    assert sample("engram_reply_commit_wait_seconds_count") == 3.0
    assert REGISTRY.get_sample_value("engram_reply_commit_wait_seconds_bucket", {"le": "0.001"}) == 1.0
    assert sample("engram_reply_commit_wait_seconds_sum") == 0.0075


def test_a_module_that_does_not_time_commit_waits_exports_nothing_new() -> None:
    assert commit_waits(b"active:1\r\ncommitted_offset:900\r\n") is None
