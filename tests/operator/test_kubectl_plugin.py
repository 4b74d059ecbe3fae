"""`kubectl engram`: what it shows and asks, from objects shaped as the API server returns them (the
MemoryCluster's status as the operator builds it); kubectl itself runs only in e2e/ and below."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, NOW, running, spec

from engram.cli.status_table import print_status
from engram_operator import constants, labels
from engram_operator.decisions import decide
from engram_operator.kubectl import cli, runner, view
from engram_operator.kubectl.view import PluginError
from engram_operator.observe import JobInfo, Observed
from engram_operator.reshard_progress import ReshardProgress
from engram_operator.status import build_status

NAMESPACE = "db"


def _pod(info: Any, role: str) -> dict[str, Any]:
    return {
        "metadata": {"name": info.name, "namespace": NAMESPACE,
                     "labels": labels.engine_pod_labels("demo", info.shard, info.index, info.zone, role)},
        "status": {"podIP": info.ip or f"10.0.{info.shard}.{info.index + 1}", "phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True" if info.ready else "False"}],
                   "containerStatuses": [{"name": "node", "restartCount": info.index}, {"name": "valkey",
                                                                                      "restartCount": 0}]},
    }


def _resharding(seen: Observed, phase: str, **fields: Any) -> Observed:
    """The reshard Job from 1 to 3 shards (succeeded once its plan is done); every node reports the plan
    in ``phase``."""
    job = JobInfo(name=labels.reshard_job_name("demo", 3), cluster_id=CLUSTER_ID, owner_uid="uid-1", shards=3,
                  from_shards=1, created=NOW - 600, succeeded=phase == "done")
    progress = ReshardProgress(from_shards=1, to_shards=3, phase=phase, id="plan-1", started=NOW - 200,
                               updated=NOW - 5, **fields)
    answers = {name: dataclasses.replace(s, reshard=progress) for name, s in seen.statuses.items()}
    return dataclasses.replace(seen, reshard_jobs=[job], statuses=answers)


def _objects(shards: int = 2, reshard: str = "", **progress: Any
             ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The MemoryCluster, engine pods, journal pods; ``reshard``: a reshard 1 -> 3 in this phase."""
    cluster = spec(shards=shards, replicasPerShard=2)
    seen = running(cluster)
    if reshard:
        seen = _resharding(seen, reshard, **progress)
    status = build_status(cluster, seen, decide(cluster, seen), None, generation=1, now="2026-12-03T00:00Z")
    body = {"metadata": {"name": "demo", "namespace": NAMESPACE},
            "spec": {"shards": shards, "replicasPerShard": 2}, "status": status}
    pods = [_pod(p, seen.role(p) or "replica") for p in seen.pods]
    journal = [{"metadata": {"name": labels.journal_pod_name("demo", i),
                             "labels": {**labels.cluster_labels("demo", labels.JOURNAL), labels.ZONE: z}},
                "status": {"podIP": f"10.1.0.{i}", "containerStatuses": [{"restartCount": 2}]}}
               for i, z in enumerate(("zone-a", "zone-b", "zone-c"))]
    return body, pods, journal


def test_status_has_the_shape_of_local_status_with_each_shards_primary_and_lag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    body, pods, journal = _objects()
    doc = view.status_doc(body, pods, journal)
    assert {"name", "endpoint", "nodes", "journal", "shards"} <= doc.keys()
    assert doc["endpoint"] == f"demo.{NAMESPACE}.svc:{constants.CLIENT_PORT}"
    assert [(n["shard"], n["index"]) for n in doc["nodes"]] == [(s, i) for s in range(2) for i in range(3)]
    primaries = [n["id"] for n in doc["nodes"] if n["role"] == "primary"]
    assert primaries == [s["primary"] for s in doc["shard_status"]] and len(primaries) == 2
    node, pod = doc["nodes"][1], next(p for p in pods if p["metadata"]["name"] == doc["nodes"][1]["id"])
    ip = pod["status"]["podIP"]
    assert node["address"] == f"{ip}:{constants.CLIENT_PORT}"
    assert node["admin"] == f"{ip}:{constants.ADMIN_PORT}"
    assert node["restarts"] == 1 and node["ready"] and doc["zones"] == ["zone-a", "zone-b", "zone-c"]
    assert doc["journal"][0]["url"] == f"nats://10.1.0.0:{constants.JOURNAL_CLIENT_PORT}"
    json.dumps(doc)  # --json prints it as it is
    print_status(doc)
    out = capsys.readouterr().out
    assert f"(namespace {NAMESPACE})" in out and "MAX LAG" in out and primaries[0] in out


def test_status_shows_a_running_reshards_progress_eta_and_condition(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body, pods, journal = _objects(3, "moving", slots_total=10923, slots_moved=3641, keys_moved=500)
    doc = view.status_doc(body, pods, journal)
    assert doc["resharding"] == body["status"]["resharding"]
    assert (doc["resharding"]["phase"], doc["resharding"]["eta"]) == ("moving", 390)
    progress, condition = view.resharding_lines(doc)
    assert progress == ("resharding: 1 -> 3 shards  moving   [#######.............] 3641/10923 slots  "
                        "500 keys  ETA 6m30s")
    assert condition.startswith("condition Resharding: True (Moving): resharding from 1 to 3 shards (moving)")

    def get_json(*args: str, namespace: str | None = None) -> Any:
        return body if args[0] == cli.RESOURCE else {"items": journal if "journal" in args[-1] else pods}

    monkeypatch.setattr(runner, "get_json", get_json)
    assert cli.main(["status", "demo", "-n", NAMESPACE]) == 0
    assert f"\n\n{progress}\n{condition}\n" in capsys.readouterr().out
    assert cli.main(["status", "demo", "-n", NAMESPACE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resharding"]["slotsMoved"] == 3641


def test_a_pending_reshard_shows_no_eta_and_a_finished_one_says_done() -> None:
    body, pods, journal = _objects(3)
    body["status"]["resharding"] = {"phase": "pending", "fromShards": 1, "toShards": 3, "slotsTotal": 0,
                                    "slotsMoved": 0, "keysMoved": 0, "bytesMoved": 0}
    line = view.reshard_progress_line(body["status"]["resharding"])
    assert line == "1 -> 3 shards  pending  [....................] 0/0 slots  0 keys"
    done, _, _ = _objects(3, "done", slots_total=10923, slots_moved=10923, keys_moved=77)
    progress, condition = view.resharding_lines(view.status_doc(done, pods, journal))
    assert "done     [####################] 10923/10923 slots  77 keys" in progress and "ETA" not in progress
    assert condition.startswith("condition Resharding: False (Done): the cluster has 3 shards: resharding")


def test_a_cluster_never_resharded_shows_nothing_about_resharding_unless_its_condition_has_news() -> None:
    body, pods, journal = _objects()
    doc = view.status_doc(body, pods, journal)
    assert doc["resharding"] is None
    assert [c["reason"] for c in doc["conditions"] if c["type"] == "Resharding"] == ["NotResharded"]
    assert view.resharding_lines(doc) == []
    doc["conditions"] = [{"type": "Resharding", "status": "False", "reason": "Blocked",
                          "message": "spec.shards is 3 but\nthe slot map has 2"}]
    assert view.resharding_lines(doc) == ["condition Resharding: False (Blocked): spec.shards is 3 but the "
                                          "slot map has 2"]


def test_an_eta_reads_in_seconds_minutes_or_hours() -> None:
    record = {"phase": "moving", "fromShards": 3, "toShards": 2, "slotsTotal": 5461, "slotsMoved": 5461}
    full = view.reshard_progress_line({**record, "eta": 0})
    assert full.endswith("[####################] 5461/5461 slots  0 keys  ETA 0s")
    assert view.reshard_progress_line({**record, "eta": 185}).endswith("ETA 3m05s")
    assert view.reshard_progress_line({**record, "eta": 3720}).endswith("ETA 1h02m")


def test_switchover_goes_from_the_shards_primary_to_a_ready_replica_or_says_why_not() -> None:
    doc = view.status_doc(*_objects())
    primary = next(n for n in doc["nodes"] if n["shard"] == 1 and n["role"] == "primary")
    replica = next(n for n in doc["nodes"] if n["shard"] == 1 and n["role"] == "replica")
    assert view.switchover_pair(doc, replica["id"]) == (primary["id"], replica["id"])
    with pytest.raises(PluginError, match=r"nosuch is not a node of MemoryCluster demo; nodes: demo-"):
        view.switchover_pair(doc, "nosuch")
    with pytest.raises(PluginError, match=rf"{primary['id']} is a primary: a switchover goes to a ready"):
        view.switchover_pair(doc, primary["id"])
    replica["ready"] = False
    with pytest.raises(PluginError, match=r"replica, not ready"):
        view.switchover_pair(doc, replica["id"])
    replica["ready"] = True
    primary["role"] = "replica"
    with pytest.raises(PluginError, match=r"shard 1 has no primary to hand over from"):
        view.switchover_pair(doc, replica["id"])


def test_a_snapshot_is_a_request_in_the_spec_and_done_once_the_status_says_so() -> None:
    assert view.snapshot_patch("r1") == {"spec": {"snapshots": {"request": "r1"}}}
    body, _, _ = _objects()
    assert view.snapshot_progress(body, "r1") == (False, [])
    results = [{"shard": 0, "pod": "demo-0-1", "ok": True, "detail": "seq 9"}]
    body["status"]["snapshots"] = {"lastRequest": "r1", "completedAt": "2026-12-03T01Z", "results": results}
    assert view.snapshot_progress(body, "r1") == (True, results)
    assert view.snapshot_progress(body, "r0") == (False, [])


def test_events_read_oldest_first_on_one_line_each() -> None:
    events = [
        {"lastTimestamp": "2026-12-03T10:00:05Z", "type": "Warning", "reason": "SnapshotFailed",
         "involvedObject": {"kind": "MemoryCluster", "name": "demo"}, "message": "shard 0:\nno space"},
        {"eventTime": "2026-12-03T10:00:01Z", "type": "Normal", "reason": "Switchover",
         "involvedObject": {"kind": "MemoryCluster", "name": "demo"}, "message": "demo-0-0 -> demo-0-1"},
    ]
    rows = view.event_rows(events)
    assert [r[2] for r in rows] == ["Switchover", "SnapshotFailed"]
    assert rows[1][1:] == ("Warning", "SnapshotFailed", "MemoryCluster/demo", "shard 0: no space")


def test_the_local_port_is_read_from_kubectls_port_forward_line() -> None:
    assert view.forwarded_port("Forwarding from 127.0.0.1:41234 -> 16379\n") == 41234
    assert view.forwarded_port("Forwarding from [::1]:41234 -> 16379\n") is None
    assert view.forwarded_port("") is None


def test_without_kubectl_on_path_the_error_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "KUBECTL", "kubectl-that-is-not-installed")
    assert cli.main(["events", "demo"]) == 1
    assert "kubectl is not on PATH" in capsys.readouterr().err
