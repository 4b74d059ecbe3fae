"""A short `engram chaos` scenario: primaries, replicas and journal servers killed or paused, and a zone
cut off where network namespaces can be made, under load; still no acknowledged write lost and every
register history linearizable.

Run it longer by hand: `engram chaos --duration 600` (it starts and removes its own cluster).
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engram.platforms.local import network
from engram.platforms.local.testing import run_engram

pytestmark = pytest.mark.integration

# Where zones can have networks of their own (root, `ip`), a zone partition is the fifth fault.
NETNS = not network.unavailable()
# Faults at 4, 15, 26, 37 (and 48) s: each kind once, and 18 s left to see the last one recover.
FAULT_INTERVAL = 11
EXPECTED_FAULTS = ("kill-primary", "kill-replica", "kill-journal", "pause-primary") + (
    ("partition-zone",) if NETNS else ()
)
DURATION = 55 + (FAULT_INTERVAL if NETNS else 0)


@pytest.mark.timeout(300)
def test_faults_under_load_lose_no_acknowledged_write_and_history_is_linearizable(local_cluster) -> None:
    status = local_cluster(shards=1, replicas=2, lease=2.0, **({"netns": True} if NETNS else {}))
    done = subprocess.run(
        [sys.executable, "-m", "engram.chaos", "--json",
         "--name", status["name"], "--dir", str(Path(status["dir"]).parent),
         "--duration", str(DURATION), "--fault-interval", str(FAULT_INTERVAL),
         "--clients", "6", "--keys", "5", "--seed", "4"],
        capture_output=True, text=True, timeout=260, check=False,
    )
    assert done.stdout, f"engram chaos printed no report (exit {done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    context = f"exit {done.returncode}; report:\n{json.dumps(report, indent=2)[:6000]}\n{done.stderr[-3000:]}"

    assert report["fault_counts"] == {kind: 1 for kind in EXPECTED_FAULTS}, context
    if not NETNS:
        assert [s["kind"] for s in report["faults_skipped"]] == ["partition-zone"], context
    assert all(f["recovered_after"] is not None for f in report["faults_injected"]), context
    assert report["failovers"], f"killing and pausing primaries caused no failover: {context}"
    assert report["operations"] > 1000, context
    assert report["acknowledged_writes"] > 100, context
    assert report["lost_acknowledged_writes"] == 0, context
    assert report["failed_but_present"] == 0 and not report["unexpected_values"], context
    assert report["duplicated_appends"] == 0, context
    assert report["linearizable"] is True, context
    # Users made through the primaries during the faults: every acknowledged one is on every node.
    users = report["users"]
    assert users["acknowledged"] >= 5 and users["nodes_checked"] == 3 and users["missing"] == {}, context
    assert done.returncode == 0, context


@pytest.mark.timeout(150)
def test_a_sweep_of_two_seeds_with_faults_every_4s_passes_and_faults_never_overlap(tmp_path: Path) -> None:
    # Kill, pause and kill again 4 s apart: the pause (shortened to 3 s) lands while the first failover may
    # still be under way. Evidence is kept so the test can read each run's report.
    done = subprocess.run(
        [sys.executable, "-m", "engram.chaos", "--json", "--seeds", "11,12", "--duration", "20",
         "--fault-interval", "4", "--faults", "kill-primary,pause-primary,kill-replica",
         "--clients", "4", "--keys", "3", "--evidence", str(tmp_path / "ev"), "--keep-evidence"],
        capture_output=True, text=True, timeout=140, check=False, cwd=tmp_path,
    )
    assert done.stdout, f"engram chaos printed nothing (exit {done.returncode}):\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout)
    context = f"exit {done.returncode}: {json.dumps(result, indent=2)}\n{done.stderr[-3000:]}"
    assert (done.returncode, result["ok"], result["failed_seed"]) == (0, True, None), context
    assert [r["seed"] for r in result["runs"]] == [11, 12], context
    for run in result["runs"]:
        assert run["lost_acknowledged_writes"] == 0 and run["linearizable"] is True, context
        report = json.loads((Path(run["evidence"]) / "report.json").read_text())
        assert Path(report["history"]).is_file() and (Path(run["evidence"]) / "logs").is_dir(), context
        faults = report["faults_injected"]
        tried = sorted([f["kind"] for f in faults] + [s["kind"] for s in report["faults_skipped"]])
        assert tried == ["kill-primary", "kill-replica", "pause-primary"] and len(faults) >= 2, context
        for fault, following in itertools.pairwise(faults):
            assert fault["until"] <= following["at"], f"overlapping faults: {context}"
        assert all(f["until"] <= 20 - 8 + 1 for f in faults), context


@pytest.mark.timeout(240)
def test_snapshots_killed_part_way_leave_the_shard_whole_and_the_next_one_truncates(local_cluster) -> None:
    # No schedule: every snapshot is one the fault asks for and kills, in replay, save, upload, rehearsal,
    # pruning or truncation. Then an undisturbed snapshot must still verify and truncate.
    status = local_cluster(shards=1, replicas=2, lease=2.0, snapshot_interval=0, snapshot_entries=0)
    base = str(Path(status["dir"]).parent)
    done = subprocess.run(
        [sys.executable, "-m", "engram.chaos", "--json", "--name", status["name"], "--dir", base,
         "--duration", "32", "--fault-interval", "3", "--faults", "kill-snapshot",
         "--clients", "4", "--keys", "3", "--seed", "21"],
        capture_output=True, text=True, timeout=200, check=False,
    )
    assert done.stdout, f"engram chaos printed no report (exit {done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    context = f"exit {done.returncode}; report:\n{json.dumps(report, indent=2)[:6000]}\n{done.stderr[-3000:]}"
    killed = [f for f in report["faults_injected"] if f["detail"].startswith("sent SIGKILL to the snapshot")]
    assert killed, f"no snapshot was killed part-way: {context}"
    assert report["lost_acknowledged_writes"] == 0 and report["linearizable"] is True, context
    assert done.returncode == 0, context
    [journal] = report["journal"]
    assert journal["written"] > 100 and journal["samples"] >= 2, context

    taken = run_engram("local", "snapshot", status["name"], "--dir", base, timeout=120)
    assert taken.returncode == 0, f"a snapshot after the kills failed:\n{taken.stdout}\n{taken.stderr}"
    kept_from = re.search(r"snapshot at entry (\d+).*journal kept from entry (\d+)", taken.stderr)
    assert kept_from and int(kept_from[2]) > 1, f"the journal was not truncated: {taken.stderr}"


def _elections(status: dict) -> int:
    """Leaderships won by campaigning, over every node's log (a planned hand-over is not one)."""
    return sum(Path(n["log"]).read_text(errors="replace").count(" won leadership of shard ")
               for n in status["nodes"])


@pytest.mark.timeout(200)
def test_planned_restarts_and_switchovers_hand_over_without_an_election(local_cluster) -> None:
    # SIGTERM of the primary, of the journal server leading the stream, and a switchover, 6 s apart:
    # each hands leadership over, so no replica ever has to campaign.
    status = local_cluster(shards=1, replicas=2, lease=2.0)
    before = _elections(status)
    done = subprocess.run(
        [sys.executable, "-m", "engram.chaos", "--json",
         "--name", status["name"], "--dir", str(Path(status["dir"]).parent),
         "--duration", "32", "--fault-interval", "6", "--faults", "term-primary,term-journal,switchover",
         "--clients", "4", "--keys", "3", "--seed", "31"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.stdout, f"engram chaos printed no report (exit {done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    context = f"exit {done.returncode}; report:\n{json.dumps(report, indent=2)[:6000]}\n{done.stderr[-3000:]}"
    assert report["fault_counts"] == {"term-primary": 2, "term-journal": 1, "switchover": 1}, context
    assert all(f["recovered_after"] is not None for f in report["faults_injected"]), context
    assert len(report["failovers"]) >= 3, f"the primary never changed hands: {context}"
    assert report["lost_acknowledged_writes"] == 0 and report["linearizable"] is True, context
    assert done.returncode == 0, context
    assert _elections(status) == before, f"a planned change ended in an election: {context}"
