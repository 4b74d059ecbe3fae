"""The pieces of the snapshot fault and the journal-size report that need no cluster."""

from __future__ import annotations

import subprocess
import sys

from engram.chaos.faults import snapshot_child
from engram.chaos.journal_size import ShardJournal
from engram.journal.client import StreamState


def test_the_snapshot_child_is_found_among_a_parents_children_only() -> None:
    # A stand-in parent with two children; only the one running `engram.snapshots` is the snapshot.
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
         "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'engram.snapshots'])\n"
         "print(b.pid, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stdout is not None
        expected = int(parent.stdout.readline())
        assert snapshot_child(parent.pid) == expected
        assert snapshot_child(expected) is None  # it has no children itself
        assert snapshot_child(None) is None
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()


def test_journal_size_reports_what_was_written_and_the_most_held() -> None:
    seen = ShardJournal(0)
    for state in (StreamState(1, 100, 100, 10_000), StreamState(1, 900, 900, 90_000),
                  StreamState(850, 1_000, 151, 15_100)):
        seen.add(state)
    doc = seen.to_json()
    got = (doc["written"], doc["messages_max"], doc["messages_end"], doc["first_seq_end"])
    assert got == (900, 900, 151, 850)
    assert "900 entries written" in seen.text() and "151 at the end (from entry 850)" in seen.text()


def test_a_shard_never_sampled_reports_nothing_written() -> None:
    assert ShardJournal(2).to_json()["written"] == 0
