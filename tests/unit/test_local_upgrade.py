"""`engram local upgrade` without processes: the targets it accepts and refuses, how it sees nodes for
the shared plan, the node request the supervisor carries out, and the status line of a half-done one."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from engram import binaries
from engram.node.config import NodeConfig
from engram.platforms.local import node_requests, plan, processes, request_handlers, upgrade
from engram.platforms.local import supervisor as supervisor_module
from engram.platforms.local.cluster import LocalError
from engram.platforms.local.state import NODES_STARTED, ClusterState
from engram.platforms.local.supervisor import Supervisor, node_command
from engram.resharding.record import ReshardRecord


def _state(tmp_path: Path, **spec: Any) -> ClusterState:
    spec_ = plan.ClusterSpec(name="demo", **spec)
    state = plan.plan(spec_, tmp_path / "demo", "nats-server", "valkey-server")
    Path(state.dir).mkdir(parents=True, exist_ok=True)
    return state


def _script(tmp_path: Path, name: str, says: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\necho '{says}'\n")
    path.chmod(0o755)
    return path


def test_the_target_is_exactly_one_of_a_node_command_and_a_valkey_server() -> None:
    for command, valkey in ((None, None), ("python -m engram.node", "/usr/bin/valkey-server")):
        with pytest.raises(LocalError, match="exactly one"):
            upgrade.check_target(command, valkey)


def test_a_node_command_must_name_a_program_that_runs(tmp_path: Path) -> None:
    with pytest.raises(LocalError, match="empty"):
        upgrade.check_target("  ", None)
    with pytest.raises(LocalError, match="not on PATH"):
        upgrade.check_target("no-such-engram-program --flag", None)
    with pytest.raises(LocalError, match="not an executable file"):
        upgrade.check_target(f"{tmp_path}/missing.py", None)
    target = upgrade.check_target(f"{sys.executable} -X dev node.py", None)
    assert target.command == [sys.executable, "-X", "dev", "node.py"] and not target.valkey_server


def test_a_valkey_server_must_be_an_executable_that_says_it_is_one(tmp_path: Path) -> None:
    with pytest.raises(LocalError, match="not an executable file"):
        upgrade.check_target(None, str(tmp_path / "nothing"))
    impostor = _script(tmp_path, "valkey-server", "nats-server: v2.14.0")
    with pytest.raises(LocalError, match=r"not a valkey-server .*nats-server: v2\.14\.0"):
        upgrade.check_target(None, str(impostor))
    real = binaries.find("valkey-server")
    assert upgrade.check_target(None, real).valkey_server == str(Path(real).absolute())


def test_nodes_are_up_to_date_once_they_run_the_target(tmp_path: Path) -> None:
    state = _state(tmp_path, replicas=1)
    new = upgrade.Target(command=["/opt/new/engram-node"])
    state.nodes[0].command = ["/opt/old/engram-node"]
    state.nodes[1].command = ["/opt/new/engram-node"]
    assert [new.runs_on(n) for n in state.nodes] == [False, True]
    binary = upgrade.Target(valkey_server="/opt/valkey-9/valkey-server")
    state.nodes[1].valkey_server = "/opt/valkey-9/valkey-server"
    assert [binary.runs_on(n) for n in state.nodes] == [False, True]


def test_an_outdated_halted_or_long_silent_node_is_stuck_for_the_plan(tmp_path: Path) -> None:
    state = _state(tmp_path, replicas=2)
    target = upgrade.Target(command=["new"])
    live = [{"role": "primary", "applied_seq": "9"}, {"role": "replica", "halted": "entry 7 is newer"}, None]
    silent: dict[str, float] = {}
    views = upgrade.upgrade_views(state, live, target, silent, now=100.0)
    assert [(v.id, v.index, v.role, v.ready, v.stuck) for v in views] == [
        ("demo-s0-n0", 0, "primary", True, False),
        ("demo-s0-n1", 1, "replica", False, True),
        ("demo-s0-n2", 2, "", False, False),
    ]
    assert views[0].applied_seq == 9 and not views[2].answering
    later = upgrade.upgrade_views(state, live, target, silent, now=100.0 + upgrade.STUCK_AFTER)
    assert later[2].stuck
    # Answering again starts the count afresh.
    upgrade.upgrade_views(state, [*live[:2], {"role": "starting"}], target, silent, now=200.0)
    assert not upgrade.upgrade_views(state, live, target, silent, now=201.0)[2].stuck


def test_a_half_done_upgrade_shows_which_nodes_run_what() -> None:
    same = {"command": ["python", "-m", "engram.node"], "valkey_server": "/v"}
    doc = {"nodes": [{"id": "a", **same}, {"id": "b", **same}]}
    assert upgrade.mixed_versions(doc) == ""
    doc["nodes"].append({"id": "c", "command": ["python", "new.py"], "valkey_server": "/v"})
    line = upgrade.mixed_versions(doc)
    assert "a, b run `python -m engram.node` with /v" in line and "c run `python new.py`" in line


def test_a_node_request_round_trips_and_garbage_is_refused(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.supervisor_pid = None
    request = node_requests.NodeRequest.new("demo-s0-n1", ["python", "new.py"], "")
    node_requests.send_request(state, request)
    assert node_requests.take_request(state) == request
    assert node_requests.take_request(state) is None
    node_requests.request_path(state).write_text('{"id": "x", "node": "n", "command": "not a list"}')
    with pytest.raises(ValueError, match="not a node request"):
        node_requests.take_request(state)
    assert not node_requests.request_path(state).exists()


def test_a_node_runs_its_recorded_command_before_the_clusters(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(tmp_path)
    node = state.nodes[0]
    monkeypatch.delenv("ENGRAM_NODE_COMMAND", raising=False)
    assert node_command(state, node) == [sys.executable, "-m", "engram.node"]
    monkeypatch.setenv("ENGRAM_NODE_COMMAND", "env-node --x")
    assert node_command(state, node) == ["env-node", "--x"]
    state.node_command = ["cluster-node"]
    assert node_command(state, node) == ["cluster-node"]
    node.command = ["upgraded-node"]
    assert node_command(state, node) == ["upgraded-node"]


class FakeProcess:
    """A Popen stand-in: alive until terminated."""

    count = 0

    def __init__(self, argv: list[str]) -> None:
        FakeProcess.count += 1
        self.pid = 200_000 + FakeProcess.count
        self.argv = argv
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.signals.append(signal.SIGTERM)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)


def _run_nodes(supervisor: Supervisor) -> None:
    for node in supervisor.state.nodes:
        child = supervisor._node_child(node)
        child.start()
        supervisor.nodes.append(child)


def test_the_supervisor_replaces_a_node_with_its_new_command_and_binary_without_counting_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[FakeProcess] = []

    def spawn(argv: list[str], log: str, env: dict[str, str] | None = None) -> FakeProcess:
        spawned.append(proc := FakeProcess(argv))
        return proc

    monkeypatch.setattr(processes, "spawn", spawn)
    state = _state(tmp_path, replicas=1)
    plan.write_files(state)
    state.save()
    supervisor = Supervisor(state.path)
    _run_nodes(supervisor)
    old = spawned[1]
    assert supervisor.state.nodes[1].command == [sys.executable, "-m", "engram.node"]

    request = node_requests.NodeRequest.new("demo-s0-n1", ["/opt/new-node"], "/opt/valkey-9/valkey-server")
    node_requests.send_request(supervisor.state, request)
    request_handlers.carry_out_node_request(supervisor)
    saved = ClusterState.load(state.path)
    assert saved.nodes[1].command == ["/opt/new-node"]
    assert saved.nodes[1].valkey_server == "/opt/valkey-9/valkey-server"
    assert NodeConfig.load(saved.nodes[1].config).valkey_server == "/opt/valkey-9/valkey-server"
    assert old.signals == [signal.SIGTERM] and len(spawned) == 2
    # Answered only once the new process runs: until then the old one may still answer on its ports.
    assert saved.node_request == ""
    supervisor._tend()
    assert ClusterState.load(state.path).node_request == "" and len(spawned) == 2

    old.returncode = 0  # it stopped
    supervisor._tend()
    assert len(spawned) == 3 and spawned[2].argv == ["/opt/new-node", "--config", saved.nodes[1].config]
    saved = ClusterState.load(state.path)
    assert (saved.node_request, saved.node_request_error) == (request.id, "")
    assert saved.nodes[1].pid == spawned[2].pid and saved.nodes[1].restarts == 0
    assert spawned[0].signals == []

    unknown = node_requests.NodeRequest.new("demo-s9-n9", ["/opt/new-node"], "")
    node_requests.send_request(supervisor.state, unknown)
    request_handlers.carry_out_node_request(supervisor)
    assert "no node demo-s9-n9" in ClusterState.load(state.path).node_request_error


def test_a_node_that_will_not_stop_is_killed_and_one_already_down_starts_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[FakeProcess] = []

    def spawn(argv: list[str], log: str, env: dict[str, str] | None = None) -> FakeProcess:
        spawned.append(proc := FakeProcess(argv))
        return proc

    monkeypatch.setattr(processes, "spawn", spawn)
    state = _state(tmp_path, replicas=1)
    plan.write_files(state)
    state.save()
    supervisor = Supervisor(state.path)
    _run_nodes(supervisor)
    monkeypatch.setattr(supervisor_module.time, "monotonic", lambda: 1000.0)
    node_requests.send_request(supervisor.state, node_requests.NodeRequest.new("demo-s0-n0", ["/opt/n"], ""))
    request_handlers.carry_out_node_request(supervisor)
    monkeypatch.setattr(supervisor_module.time, "monotonic", lambda: 1000.0 + supervisor_module.STOP_TIMEOUT)
    supervisor._tend()
    assert spawned[0].signals == [signal.SIGTERM, signal.SIGKILL]

    spawned[1].returncode = 1  # crashed: waiting out its backoff when the request comes
    supervisor._tend()
    request = node_requests.NodeRequest.new("demo-s0-n1", ["/opt/n"], "")
    node_requests.send_request(supervisor.state, request)
    request_handlers.carry_out_node_request(supervisor)
    assert spawned[-1].argv[0] == "/opt/n" and ClusterState.load(state.path).node_request == request.id


def test_a_cluster_mid_reshard_is_refused_before_anything_changes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(tmp_path, replicas=1)
    state.phase = NODES_STARTED
    state.save()
    monkeypatch.setattr(upgrade, "load_running", lambda base, name: state)
    record = ReshardRecord(from_shards=1, to_shards=2, phase="moving").dumps().decode()
    monkeypatch.setattr(upgrade, "_probe", lambda s: [{"role": "primary", "reshard": record}, None])
    sent: list[node_requests.NodeRequest] = []
    monkeypatch.setattr(upgrade, "send_request", lambda s, request: sent.append(request))
    refused = r"resharding to 2 shards \(moving\).*`engram local scale demo --shards 2`"
    with pytest.raises(LocalError, match=refused):
        upgrade.upgrade(tmp_path, "demo", upgrade.Target(command=["/opt/new-node"]))
    assert sent == []
