"""Status written by the operator: fits the CRD's declared schema, conditions in Kubernetes form."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, journal_up, just_applied, provision_job, running, spec
from k8s_offline import crd_schema, memorycluster_crd, schema_errors

from engram_operator import probe
from engram_operator.conditions import CONDITION_TYPES, Condition, build_conditions
from engram_operator.decisions import decide
from engram_operator.observe import EngineStatus, PodInfo, parse_engine_status
from engram_operator.status import build_status


def status_schema() -> dict:
    return crd_schema(memorycluster_crd())["properties"]["status"]


def test_status_of_a_ready_cluster_fits_the_crd_and_names_primaries() -> None:
    cluster = spec(shards=3, replicasPerShard=2)
    seen = running(cluster)
    status = build_status(
        cluster, seen, decide(cluster, seen), None, generation=4, now="2025-01-01T00:00:00Z"
    )
    assert schema_errors(status_schema(), status) == []
    assert status["phase"] == "Ready" and status["readyNodes"] == "9/9"
    assert status["observedGeneration"] == 4
    assert status["primaryZones"] == "zone-a=1,zone-b=1,zone-c=1"
    assert [s["primary"] for s in status["shards"]] == ["demo-0-0", "demo-1-0", "demo-2-0"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 4
    assert status["clusterId"] == CLUSTER_ID
    assert condition(status, "Provisioned")["status"] == "True"


def condition(status: dict, ctype: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_first_visit_records_the_cluster_id_and_says_provisioning_waits_for_the_journal() -> None:
    cluster = spec()
    seen = just_applied(cluster)
    status = build_status(cluster, seen, decide(cluster, seen), None, generation=1)
    assert schema_errors(status_schema(), status) == []
    assert status["clusterId"] == CLUSTER_ID
    provisioned = condition(status, "Provisioned")
    assert (provisioned["status"], provisioned["reason"]) == ("False", "WaitingForJournal")


def test_provisioned_condition_follows_the_job() -> None:
    cluster = spec()
    stages = {
        "Provisioning": journal_up(cluster),
        "ProvisioningFailed": dataclasses.replace(
            journal_up(cluster), provisioning=provision_job(cluster, failed=True, error="DeadlineExceeded")
        ),
        "Provisioned": running(cluster),
    }
    for reason, seen in stages.items():
        status = build_status(cluster, seen, decide(cluster, seen), None, generation=1)
        assert schema_errors(status_schema(), status) == []
        assert condition(status, "Provisioned")["reason"] == reason


def test_every_condition_type_is_set_on_the_first_visit() -> None:
    conds = build_conditions(None, [Condition("Ready", "False", "NotReady", "starting")], 1, now="t0")
    assert [c["type"] for c in conds] == list(CONDITION_TYPES)
    assert {c["status"] for c in conds[1:]} == {"Unknown"}


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    first = build_conditions(None, [Condition("Ready", "False", "NotReady")], 1, now="t0")
    same = build_conditions(first, [Condition("Ready", "False", "StillNotReady")], 2, now="t1")
    flipped = build_conditions(same, [Condition("Ready", "True", "ClusterReady")], 2, now="t2")
    assert same[0]["lastTransitionTime"] == "t0" and same[0]["reason"] == "StillNotReady"
    assert flipped[0]["lastTransitionTime"] == "t2"


def test_degraded_cluster_reports_phase_and_reason() -> None:
    cluster = spec(shards=1, replicasPerShard=2, placement={"spreading": "Required"})
    seen = running(cluster)
    impossible = spec(shards=1, replicasPerShard=3, placement={"spreading": "Required"})
    status = build_status(impossible, seen, decide(impossible, seen), None, generation=2)
    assert schema_errors(status_schema(), status) == []
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert status["phase"] == "Degraded"
    assert degraded["status"] == "True" and degraded["reason"] == "UnsatisfiableSpread"
    spread = next(c for c in status["conditions"] if c["type"] == "ZoneSpreadSatisfied")
    assert spread["status"] == "False" and spread["reason"] == "UnsatisfiableSpread"


def test_replica_lag_is_reported_per_shard() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    seen = running(cluster)
    primary, replica = seen.pods
    lagging = {
        primary.name: EngineStatus(role="primary", applied_seq=500, committed_seq=500),
        replica.name: EngineStatus(role="replica", applied_seq=450, committed_seq=500),
    }
    status = build_status(
        cluster, dataclasses.replace(seen, statuses=lagging), decide(cluster, seen), None, 1
    )
    assert status["shards"][0]["committedSeq"] == 500 and status["shards"][0]["maxReplicaLag"] == 50


def test_engram_status_reply_is_parsed_from_a_flat_array() -> None:
    reply = [b"node_id", b"demo-0-1", b"role", b"replica", b"epoch", 3, b"applied_seq", b"41",
             b"committed_seq", 42, b"halted", b""]  # fmt: skip
    assert parse_engine_status(reply) == EngineStatus(
        role="replica", halted="", epoch=3, applied_seq=41, committed_seq=42
    )


def test_the_operator_asks_and_switches_over_on_the_nodes_control_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Port 6379 is Valkey's, which knows neither command; 16379 is the node's own."""
    sent: list[tuple[str, int, tuple[str, ...]]] = []

    async def call(host: str, port: int, *args: str, timeout: float) -> Any:
        sent.append((host, port, args))
        return [b"role", b"primary"] if args[0] == "ENGRAM.STATUS" else "OK"

    monkeypatch.setattr(probe, "call", call)
    pod = PodInfo(name="demo-0-0", shard=0, index=0, zone="zone-a", phase="Running", ip="10.0.0.7")
    assert asyncio.run(probe.all_statuses([pod])) == {"demo-0-0": EngineStatus(role="primary")}
    asyncio.run(probe.switchover("10.0.0.7", "demo-0-1"))
    assert sent == [
        ("10.0.0.7", 16379, ("ENGRAM.STATUS",)),
        ("10.0.0.7", 16379, ("ENGRAM.FAILOVER", "demo-0-1")),
    ]
