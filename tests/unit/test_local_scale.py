"""Scaling a local cluster's shards: the nodes planned for added shards, the shard request the
supervisor carries out, and what `engram local scale` prints and refuses."""

from __future__ import annotations

import asyncio
import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from engram.cli import local as local_cli
from engram.cli.main import build_parser
from engram.node.config import NodeConfig
from engram.platforms.local import plan, ports, processes, request_handlers, scale, shard_nodes
from engram.platforms.local.state import ClusterState
from engram.platforms.local.supervisor import Supervisor
from engram.resharding.record import ReshardRecord, format_duration


def _state(tmp_path: Path, **spec: Any) -> ClusterState:
    spec_ = plan.ClusterSpec(name="demo", **spec)
    state = plan.plan(spec_, tmp_path / "demo", "nats-server", "valkey-server")
    Path(state.dir).mkdir(parents=True, exist_ok=True)
    return state


def _added(state: ClusterState, shards: int) -> list:
    return shard_nodes.plan_added_nodes(
        state, shards, shard_nodes.allocate_ports(state, shard_nodes.ports_needed(state, shards)))


def test_added_shards_get_the_nodes_up_would_have_planned_for_them(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=1, replicas=2)
    added = _added(state, 3)
    planned_whole = _state(tmp_path / "whole", shards=3, replicas=2)
    expected = [(n.id, n.shard, n.zone, n.preferred_primary) for n in planned_whole.nodes if n.shard >= 1]
    assert [(n.id, n.shard, n.zone, n.preferred_primary) for n in added] == expected
    assert [n.id for n in added] == ["demo-s1-n0", "demo-s1-n1", "demo-s1-n2", "demo-s2-n0", "demo-s2-n1",
                                     "demo-s2-n2"]
    assert all(n.config == f"{state.dir}/nodes/{n.id}/node.json" for n in added)
    assert all(n.log == f"{state.dir}/logs/{n.id}.log" for n in added)


def test_new_shards_primaries_spread_over_zones_and_their_nodes_over_distinct_zones(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=1, replicas=2)
    state.nodes += _added(state, 3)
    assert sorted(n.zone for n in state.nodes if n.preferred_primary) == ["a", "b", "c"]
    for shard in range(3):
        assert len({n.zone for n in state.nodes if n.shard == shard}) == 3


def test_added_nodes_take_ports_no_process_of_the_cluster_holds(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=2, replicas=1)
    added = _added(state, 4)
    assert len(added) == 4
    new = [p for n in added for p in (n.port, n.admin_port)]
    assert all(n.tls_port == 0 for n in added)
    assert len(set(new)) == len(new) == 8
    assert not set(new) & shard_nodes.taken_ports(state)


def test_ephemeral_ports_a_cluster_node_was_given_are_never_handed_out_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state(tmp_path, shards=1, replicas=1)
    offers = iter([[state.nodes[0].port, 40001], [40002, 40003]])
    monkeypatch.setattr(ports, "allocate", lambda count, base=None: next(offers))
    assert shard_nodes.allocate_ports(state, 2) == [40002, 40003]


def test_a_cluster_up_with_a_base_port_grows_contiguously_after_its_highest_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports, "is_free", lambda port, host=ports.LOOPBACK: True)
    state = _state(tmp_path, shards=1, replicas=1, base_port=21000)
    highest = max(shard_nodes.taken_ports(state))
    added = _added(state, 2)
    assert [n.port for n in added] == [highest + 1, highest + 2]
    assert [n.admin_port for n in added] == [highest + 3, highest + 4]


def test_a_cluster_serving_tls_gives_added_nodes_a_tls_port(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=1, replicas=1, tls=True)
    assert shard_nodes.serves_tls(state)
    added = _added(state, 2)
    assert shard_nodes.ports_needed(state, 2) == 6
    assert all(n.tls_port and n.tls_port not in (n.port, n.admin_port) for n in added)


def test_nothing_is_added_when_every_shard_has_nodes_and_the_highest_shards_go(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=3, replicas=1)
    assert shard_nodes.ports_needed(state, 3) == 0
    assert shard_nodes.plan_added_nodes(state, 2, []) == []
    assert [n.id for n in shard_nodes.removed_nodes(state, 2)] == ["demo-s2-n0", "demo-s2-n1"]
    assert shard_nodes.removed_nodes(state, 3) == []


def test_a_request_is_taken_once_and_a_malformed_one_is_refused_and_removed(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.supervisor_pid = None
    request = shard_nodes.ShardRequest.new(3)
    shard_nodes.send_request(state, request)
    assert shard_nodes.take_request(state) == request
    assert shard_nodes.take_request(state) is None
    shard_nodes.request_path(state).write_text('{"shards": "many"}')
    with pytest.raises(ValueError, match="not a shard request"):
        shard_nodes.take_request(state)
    assert not shard_nodes.request_path(state).exists()


class FakeProcess:
    """A Popen stand-in: alive until terminated."""

    count = 0

    def __init__(self) -> None:
        FakeProcess.count += 1
        self.pid = 100_000 + FakeProcess.count
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def terminate(self) -> None:
        self.signals.append(signal.SIGTERM)
        self.returncode = -signal.SIGTERM

    def kill(self) -> None:
        self.returncode = -signal.SIGKILL

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


async def _request(supervisor: Supervisor, shards: int) -> ClusterState:
    request = shard_nodes.ShardRequest.new(shards)
    shard_nodes.send_request(supervisor.state, request)
    await request_handlers.carry_out_shard_request(supervisor)
    saved = ClusterState.load(supervisor.state_path)
    assert saved.shard_request == request.id
    return saved


def test_the_supervisor_starts_nodes_for_added_shards_and_stops_those_of_removed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: dict[str, FakeProcess] = {}

    def spawn(argv: list[str], log: str, env: dict[str, str] | None = None) -> FakeProcess:
        spawned[Path(argv[-1]).parent.name] = proc = FakeProcess()
        return proc

    monkeypatch.setattr(processes, "spawn", spawn)
    state = _state(tmp_path, shards=1, replicas=1, log_level="info")
    plan.write_files(state, "info")
    state.provisioned = True
    state.save()
    supervisor = Supervisor(state.path)
    # A shard 2 removed earlier left its node's files behind: they must not be taken for the new shard's.
    stale = Path(state.dir) / "nodes" / "demo-s2-n0" / "valkey.rdb"
    stale.parent.mkdir(parents=True)
    stale.write_text("old shard")

    saved = asyncio.run(_request(supervisor, 3))
    assert saved.shard_request_error == ""
    assert saved.shards == 3
    assert [n.id for n in saved.nodes] == [f"demo-s{s}-n{i}" for s in range(3) for i in range(2)]
    assert sorted(spawned) == [f"demo-s{s}-n{i}" for s in (1, 2) for i in range(2)]
    assert [c.key for c in supervisor.nodes] == sorted(spawned)  # the children `up` started are not here
    assert not stale.exists()
    config = NodeConfig.load(saved.node("demo-s2-n1").config)  # type: ignore[union-attr]
    assert (config.shard, config.shards, config.log_level) == (2, 3, "info")
    assert config.cluster_id == state.cluster_id
    assert all(saved.node(n).pid == p.pid for n, p in spawned.items())  # type: ignore[union-attr]
    assert json.loads((Path(state.dir) / "identity.json").read_text())["shards"] == 3

    saved = asyncio.run(_request(supervisor, 2))
    assert saved.shards == 2
    assert [n.id for n in saved.nodes] == [f"demo-s{s}-n{i}" for s in range(2) for i in range(2)]
    assert [c.key for c in supervisor.nodes] == ["demo-s1-n0", "demo-s1-n1"]
    assert spawned["demo-s2-n0"].poll() is not None and spawned["demo-s2-n1"].poll() is not None
    assert spawned["demo-s1-n0"].poll() is None

    again = asyncio.run(_request(supervisor, 2))  # idempotent
    assert [n.id for n in again.nodes] == [n.id for n in saved.nodes]


def test_a_request_the_supervisor_cannot_carry_out_is_answered_with_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state(tmp_path, shards=1, replicas=1)
    state.save()
    supervisor = Supervisor(state.path)

    def busy(state: ClusterState, count: int) -> list[int]:
        raise ports.PortBusy("port 7001 on 127.0.0.1 is already in use")

    monkeypatch.setattr(shard_nodes, "allocate_ports", busy)
    saved = asyncio.run(_request(supervisor, 2))
    assert "port 7001" in saved.shard_request_error
    assert saved.shards == 1 and len(saved.nodes) == 2


def test_progress_line_shows_phase_slots_keys_and_eta() -> None:
    record = ReshardRecord(from_shards=1, to_shards=3, phase="moving", slots_total=10922, slots_moved=5461,
                           keys_moved=1200, started=100.0)
    line = scale.progress_line(record)
    assert line.startswith("1 -> 3 shards  moving   [##########..........] 5461/10922 slots  1200 keys")
    assert "ETA " in line
    assert "ETA" not in scale.progress_line(ReshardRecord(from_shards=3, to_shards=2, phase="waiting"))
    assert [format_duration(s) for s in (4.4, 65, 3720)] == ["4s", "1m05s", "1h02m"]


@pytest.mark.parametrize("shards", ["0", "501", "two"])
def test_scale_refuses_a_shard_count_out_of_range_as_a_usage_error(shards: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["local", "scale", "demo", "--shards", shards])
    assert exit_.value.code == 2


def test_scale_to_the_shard_count_the_cluster_has_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> dict:
        raise scale.ScaleRefused("cluster demo already has 2 shards")

    monkeypatch.setattr(scale, "scale", refuse)
    args = build_parser().parse_args(["local", "scale", "demo", "--shards", "2"])
    assert args.func(args) == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_one_line_redrawn_in_place() -> None:
    screen = Terminal()
    line = local_cli._ProgressLine(screen)
    line(ReshardRecord(from_shards=1, to_shards=3, phase="waiting"))
    line(ReshardRecord(from_shards=1, to_shards=3, phase="moving", slots_total=100, slots_moved=50))
    line.say("shard 2 owns no slot any more")
    text = screen.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "waiting" in text.split("\r")[1] and "moving" in text.split("\r")[2]


def test_in_a_log_progress_is_a_line_per_phase() -> None:
    log = io.StringIO()
    line = local_cli._ProgressLine(log)
    for moved in (0, 10, 20):
        line(ReshardRecord(from_shards=3, to_shards=2, phase="moving", slots_total=100, slots_moved=moved))
    line(ReshardRecord(from_shards=3, to_shards=2, phase="done", slots_total=100, slots_moved=100))
    assert [row.split()[5] for row in log.getvalue().splitlines()] == ["moving", "done"]


def test_scale_passes_the_moving_users_credentials_and_key_rate_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake(base: str, name: str, shards: int, **kwargs: Any) -> dict:
        seen.update(kwargs, shards=shards)
        raise scale.LocalError("stop here")

    monkeypatch.setattr(scale, "scale", fake)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    args = build_parser().parse_args(["local", "scale", "demo", "--shards", "3", "--user", "mover",
                                      "--password-file", str(secret), "--max-keys-per-second", "0"])
    assert args.func(args) == 1
    assert (seen["shards"], seen["user"], seen["password"]) == (3, "mover", "s3cret")
    assert seen["max_keys_per_second"] == 0
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["local", "scale", "demo", "--shards", "3", "--max-keys-per-second", "-1"])
    assert exit_.value.code == 2
