"""`engram local scale --replicas` without processes: the replica request the supervisor carries out,
and the command line's refusals (the decision itself: test_replica_plan.py)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from engram.cli.main import build_parser
from engram.node.config import NodeConfig
from engram.orchestration.replicas import AddNode
from engram.platforms.local import plan, processes, replica_nodes, request_handlers
from engram.platforms.local.replicas import node_index, replica_views
from engram.platforms.local.state import ClusterState
from engram.platforms.local.supervisor import Supervisor
from tests.unit.test_local_scale import FakeProcess


def _supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Supervisor, dict[str, FakeProcess]]:
    """A supervisor of a planned 1-shard, 1-replica cluster whose nodes run as FakeProcesses."""
    spawned: dict[str, FakeProcess] = {}

    def spawn(argv: list[str], log: str, env: dict[str, str] | None = None) -> FakeProcess:
        spawned[Path(argv[-1]).parent.name] = proc = FakeProcess()
        return proc

    monkeypatch.setattr(processes, "spawn", spawn)
    state = plan.plan(plan.ClusterSpec(name="demo", shards=1, replicas=1), tmp_path / "demo", "nats-server",
                      "valkey-server")
    plan.write_files(state)
    state.provisioned = True
    state.save()
    supervisor = Supervisor(state.path)
    for node in supervisor.state.nodes:
        child = supervisor._node_child(node)
        child.start()
        supervisor.nodes.append(child)
    return supervisor, spawned


async def _request(supervisor: Supervisor, request: replica_nodes.ReplicaRequest) -> ClusterState:
    replica_nodes.send_request(supervisor.state, request)
    await request_handlers.carry_out_replica_request(supervisor)
    saved = ClusterState.load(supervisor.state_path)
    assert saved.replica_request == request.id
    return saved


def test_the_supervisor_starts_added_replicas_and_stops_and_forgets_removed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor, spawned = _supervisor(tmp_path, monkeypatch)
    # A node removed earlier under the same id left its files: the new one must not start from them.
    stale = Path(supervisor.state.dir) / "nodes" / "demo-s0-n2" / "valkey.rdb"
    stale.parent.mkdir(parents=True)
    stale.write_text("old node")

    grow = replica_nodes.ReplicaRequest.new(2, [AddNode("demo-s0-n2", 0, 2, "c")], [])
    saved = asyncio.run(_request(supervisor, grow))
    assert saved.replica_request_error == "" and saved.replicas == 2
    added = saved.node("demo-s0-n2")
    assert added is not None and added.zone == "c" and added.pid == spawned["demo-s0-n2"].pid
    assert not added.preferred_primary and not stale.exists()
    config = NodeConfig.load(added.config)
    assert (config.node_id, config.shard, config.zone) == ("demo-s0-n2", 0, "c")
    taken = {p for n in saved.nodes for p in (n.port, n.admin_port) if n.id != "demo-s0-n2"}
    assert not taken & {added.port, added.admin_port}
    assert asyncio.run(_request(supervisor, grow)).nodes == saved.nodes  # carried out twice: no change

    shrink = replica_nodes.ReplicaRequest.new(0, [], ["demo-s0-n1", "demo-s0-n2"])
    saved = asyncio.run(_request(supervisor, shrink))
    assert saved.replicas == 0 and [n.id for n in saved.nodes] == ["demo-s0-n0"]
    assert [c.key for c in supervisor.nodes] == ["demo-s0-n0"]
    assert signal.SIGTERM in spawned["demo-s0-n1"].signals and spawned["demo-s0-n2"].poll() is not None
    assert spawned["demo-s0-n0"].poll() is None


def test_the_supervisor_refuses_to_remove_a_node_it_saw_lead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor, spawned = _supervisor(tmp_path, monkeypatch)
    # A failover since the command looked made n1 the primary.
    supervisor.status = {"demo-s0-n0": {"role": "replica"}, "demo-s0-n1": {"role": "primary"}}
    saved = asyncio.run(_request(supervisor, replica_nodes.ReplicaRequest.new(0, [], ["demo-s0-n1"])))
    assert "demo-s0-n1 now leads its shard" in saved.replica_request_error
    assert saved.replicas == 1 and len(saved.nodes) == 2 and spawned["demo-s0-n1"].poll() is None


def test_a_malformed_replica_request_is_refused_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor, _ = _supervisor(tmp_path, monkeypatch)
    path = replica_nodes.request_path(supervisor.state)
    path.write_text('{"id": "x", "replicas": 1, "add": [], "remove": "demo-s0-n1"}')
    with pytest.raises(ValueError, match="not a replica request"):
        replica_nodes.take_request(supervisor.state)
    assert not path.exists()


def test_the_decision_sees_each_nodes_index_zone_and_role(tmp_path: Path) -> None:
    state = plan.plan(plan.ClusterSpec(name="demo", shards=1, replicas=1), tmp_path / "demo", "nats-server",
                      "valkey-server")
    views = replica_views(state, [{"role": "primary"}, None])
    assert [(v.id, v.index, v.zone, v.role) for v in views] == [
        ("demo-s0-n0", 0, "a", "primary"), ("demo-s0-n1", 1, "b", "")]
    assert node_index("demo-s3-n12") == 12 and node_index("odd") is None


@pytest.mark.parametrize("argv", [
    ["--replicas", "-1"],
    ["--replicas", "two"],
    ["--replicas", "1", "--shards", "2"],
    [],
])
def test_scale_refuses_a_bad_replica_count_or_both_counts_as_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["local", "scale", "demo", *argv])
    assert exit_.value.code == 2


def test_options_of_moving_slots_with_replicas_exit_2(tmp_path: Path) -> None:
    args = build_parser().parse_args(["local", "scale", "demo", "--dir", str(tmp_path), "--replicas", "1",
                                      "--chunk-slots", "64"])
    assert args.func(args) == 2
