"""Laying out a local cluster: zones, ids, ports, state file, CLI arguments."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from cryptography import x509

from engram.cli.main import build_parser
from engram.node.config import NodeConfig
from engram.node.peer import parse_status
from engram.platforms.local import journal, plan, ports
from engram.platforms.local.state import ClusterState, check_name


def _state(tmp_path: Path, **spec: object) -> ClusterState:
    return plan.plan(plan.ClusterSpec(name="demo", **spec), tmp_path / "demo", "nats-server", "valkey-server")  # type: ignore[arg-type]


def test_a_shards_nodes_sit_in_distinct_zones_and_planned_primaries_are_balanced(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=3, replicas=2)
    for shard in range(3):
        assert len({n.zone for n in state.nodes if n.shard == shard}) == 3
    preferred = [n for n in state.nodes if n.preferred_primary]
    assert sorted(n.shard for n in preferred) == [0, 1, 2]
    assert sorted(n.zone for n in preferred) == ["a", "b", "c"]
    configs = {n.id: plan.node_config(state, n) for n in state.nodes}
    assert all(configs[n.id].preferred_primary == n.preferred_primary for n in state.nodes)
    assert all(c.shards == 3 for c in configs.values())


def test_node_ids_name_cluster_shard_and_index(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=2, replicas=1)
    assert [n.id for n in state.nodes] == ["demo-s0-n0", "demo-s0-n1", "demo-s1-n0", "demo-s1-n1"]
    assert [n.zone for n in state.nodes] == ["a", "b", "c", "a"]


def test_every_process_gets_its_own_port(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=2, replicas=2)
    used = [state.endpoint_port, *(n.port for n in state.nodes), *(n.admin_port for n in state.nodes)]
    used += [p for j in state.journal for p in (j.port, j.cluster_port, j.http_port)]
    assert len(used) == len(set(used)) == 1 + 6 + 6 + 9
    assert all(0 < p < 65536 for p in used)


def test_without_a_base_port_the_endpoint_takes_6379_when_it_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ports.RANGE_VARIABLE, raising=False)  # set for each parallel test worker
    monkeypatch.setattr(ports, "is_free", lambda port, host=ports.LOOPBACK: True)
    monkeypatch.setattr(ports, "_handed_out", set())  # earlier plans in this process claimed it
    state = _state(tmp_path)
    assert state.endpoint_port == ports.DEFAULT_ENDPOINT_PORT == 6379
    assert ports.DEFAULT_ENDPOINT_PORT not in [n.port for n in state.nodes]
    monkeypatch.setattr(ports, "is_free", lambda port, host=ports.LOOPBACK: port != 6379)
    assert _state(tmp_path).endpoint_port != 6379


def test_base_port_lays_ports_out_contiguously_as_documented(tmp_path: Path) -> None:
    base = ports.allocate(1)[0]
    if base + 16 > 65535 or not all(ports.is_free(p) for p in range(base, base + 16)):
        pytest.skip("no free contiguous block here")
    state = _state(tmp_path, replicas=2, base_port=base)
    # docs/local-platform.md: endpoint, client ports, 3 per journal server, then control ports.
    assert state.endpoint_port == base
    assert [n.port for n in state.nodes] == [base + 1, base + 2, base + 3]
    assert [(j.port, j.cluster_port, j.http_port) for j in state.journal] == [
        (base + 4, base + 5, base + 6), (base + 7, base + 8, base + 9), (base + 10, base + 11, base + 12)
    ]  # fmt: skip
    assert [n.admin_port for n in state.nodes] == [base + 13, base + 14, base + 15]
    assert [n.admin for n in state.nodes] == [f"127.0.0.1:{base + i}" for i in (13, 14, 15)]


def test_a_base_port_leaves_room_for_the_control_ports_or_is_refused(tmp_path: Path) -> None:
    # 1 endpoint + 3 client + 9 journal + 3 control ports from 65521 would end at 65536.
    with pytest.raises(ports.PortBusy, match=r"outside 1\.\.65535"):
        _state(tmp_path, replicas=2, base_port=65521)


def test_each_node_config_carries_the_control_port_the_plan_allocated(tmp_path: Path) -> None:
    state = _state(tmp_path, shards=2, replicas=1)
    plan.write_files(state)
    for node in state.nodes:
        config = NodeConfig.load(node.config)
        assert (config.port, config.admin_port) == (node.port, node.admin_port)
        assert config.admin_announce == node.admin


def test_a_state_file_from_before_control_ports_reads_port_plus_10000() -> None:
    old = {"id": "n", "shard": 0, "zone": "a", "port": 7001, "config": "c", "log": "l"}
    loaded = ClusterState.from_dict({**_minimal_state(), "nodes": [old]}).nodes[0]
    assert (loaded.control_port, loaded.admin) == (17001, "127.0.0.1:17001")


def _minimal_state() -> dict[str, object]:
    return {"name": "demo", "dir": "/d", "endpoint_port": 7000, "shards": 1, "replicas": 0,
            "zones": ["a"], "lease_seconds": 2.0, "nats_server": "n", "valkey_server": "v"}


def test_a_busy_base_port_is_refused_with_a_hint() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ports.PortBusy, match=rf"port {port}\b.* already in use.*--port"):
            ports.allocate(3, base=port)


def test_journal_has_one_server_per_zone_and_at_most_three_replicas(tmp_path: Path) -> None:
    state = _state(tmp_path, zones=("x", "y"))
    assert [j.zone for j in state.journal] == ["x", "y"]
    assert [j.target for j in state.journal] == ["journal-x", "journal-y"]
    assert plan.ClusterSpec(name="d", zones=("a", "b", "c", "d")).journal_replicas == 3


def test_local_journal_servers_share_the_cores_and_get_at_least_one() -> None:
    assert journal.go_threads(3, cores=2) == 1
    assert journal.go_threads(3, cores=8) == 2
    assert journal.go_threads(3, cores=12) == 4
    assert journal.go_threads(5, cores=1) == 1
    assert journal.server_env(3)["GOMAXPROCS"] == str(journal.go_threads(3))


def test_node_configs_point_at_every_journal_server(tmp_path: Path) -> None:
    state = _state(tmp_path, lease_seconds=1.5)
    plan.write_files(state)
    config = NodeConfig.load(state.nodes[1].config)
    assert config.node_id == "demo-s0-n1"
    assert config.zone == "b"
    assert config.port == state.nodes[1].port
    assert config.lease_seconds == 1.5
    # Every journal server, the node's own zone's first (zone b: the second server).
    assert config.journal_urls == [state.journal_urls[1], state.journal_urls[0], state.journal_urls[2]]
    assert config.journal_replicas == 3
    assert Path(state.journal[0].config).read_text().count("nats-route://") == 3


def test_journal_servers_fsync_every_write_unless_told_an_interval(tmp_path: Path) -> None:
    default = _state(tmp_path / "one")
    plan.write_files(default)
    assert 'sync_interval: "always"' in Path(default.journal[0].config).read_text()
    timed = _state(tmp_path / "two", journal_sync="100ms")
    plan.write_files(timed)
    assert all('sync_interval: "100ms"' in Path(j.config).read_text() for j in timed.journal)
    # The nodes learn each journal server's zone, to keep their stream's leader out of their own.
    assert plan.node_config(timed, timed.nodes[0]).journal_zones == {j.name: j.zone for j in timed.journal}


def test_a_journal_sync_that_is_neither_always_nor_a_duration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(plan.PlanError, match=r"--journal-sync: .* not 'sometimes'"):
        _state(tmp_path, journal_sync="sometimes")


def test_a_directory_too_deep_for_a_unix_socket_gets_its_valkey_socket_elsewhere(tmp_path: Path) -> None:
    state = _state(tmp_path / ("d" * 90))
    plan.write_files(state)
    sockets = {NodeConfig.load(n.config).valkey_socket for n in state.nodes}
    assert len(sockets) == len(state.nodes)
    assert all(len(s) <= plan.MAX_UNIX_SOCKET and not s.startswith(state.dir) for s in sockets)


@pytest.mark.parametrize("bad", ["", "has space", "dot.ted", "-lead", "x" * 41])
def test_cluster_names_that_cannot_be_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cluster name"):
        check_name(bad)


@pytest.mark.parametrize(("field", "value"), [("shards", 0), ("replicas", -1), ("zones", ("a", "a"))])
def test_impossible_layouts_are_refused(field: str, value: object) -> None:
    with pytest.raises(plan.PlanError):
        plan.ClusterSpec(name="demo", **{field: value})  # type: ignore[arg-type]


def test_state_file_round_trips_and_create_refuses_an_existing_one(tmp_path: Path) -> None:
    state = _state(tmp_path)
    Path(state.dir).mkdir(parents=True)
    assert state.create()
    assert not state.create()
    state.nodes[0].pid = 1234
    state.save()
    loaded = ClusterState.load(state.path)
    assert loaded == state
    assert json.loads(state.path.read_text())["nodes"][0]["pid"] == 1234
    assert [p.name for p in Path(state.dir).iterdir()] == ["state.json"]  # no temporary files left


def test_status_reply_becomes_a_dict_of_strings() -> None:
    reply = [b"node_id", b"n0", b"role", b"primary", b"applied_seq", b"7", b"halted", b""]
    assert parse_status(reply) == {"node_id": "n0", "role": "primary", "applied_seq": "7", "halted": ""}


def test_cli_parses_the_documented_local_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["local", "up", "demo", "--shards", "2", "--replicas", "1", "--zones", "a,b", "--dir", "/d", "--json"]
    )
    assert (args.name, args.shards, args.replicas, args.zones, args.dir, args.json) == (
        "demo", 2, 1, ("a", "b"), "/d", True
    )  # fmt: skip
    assert parser.parse_args(["local", "kill", "demo", "journal-a", "--signal", "stop"]).signal == "STOP"
    failover = parser.parse_args(["local", "failover", "demo", "--shard", "1", "--to", "demo-s1-n2"])
    assert (failover.shard, failover.to) == (1, "demo-s1-n2")
    assert parser.parse_args(["node", "--config", "/x.json"]).config == "/x.json"


def test_a_users_file_is_checked_when_the_cluster_is_planned(tmp_path: Path) -> None:
    good = tmp_path / "users.acl"
    good.write_text("user ops on >pw ~* +@all\n")
    state = _state(tmp_path, users_file=str(good))
    assert all(plan.node_config(state, n).users_file == str(good.resolve()) for n in state.nodes)
    bad = tmp_path / "bad.acl"
    bad.write_text("ops on\n")
    with pytest.raises(plan.PlanError, match=r"bad.acl line 1: expected 'user NAME RULES...'"):
        plan.ClusterSpec(name="demo", users_file=str(bad))
    with pytest.raises(plan.PlanError, match=r"--users .*missing.acl: cannot be read"):
        plan.ClusterSpec(name="demo", users_file=str(tmp_path / "missing.acl"))


def test_rebalancing_is_on_unless_up_is_told_no(tmp_path: Path) -> None:
    assert _state(tmp_path).rebalance is True
    assert _state(tmp_path, rebalance=False).rebalance is False
    args = build_parser().parse_args(["local", "up", "demo", "--no-rebalance"])
    assert args.no_rebalance is True


def test_a_tls_cluster_in_zone_networks_has_one_certificate_for_every_address_and_the_endpoint(
    tmp_path: Path,
) -> None:
    state = _state(tmp_path, tls=True, netns=True)
    plan.write_files(state)
    assert state.local_tls is not None
    cert = x509.load_pem_x509_certificate(Path(state.local_tls.cert_file).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    # The endpoint relays TLS from loopback to a node: the node must answer for 127.0.0.1 too.
    assert covered == {ports.LOOPBACK, *(n.host for n in state.nodes)}
    # Every node serves clients on a TLS port of its own, announced as its address.
    configs = [plan.node_config(state, n) for n in state.nodes]
    assert all(c.tls_port and c.announce == f"{c.host}:{c.tls_port}" for c in configs)
    assert len({n.tls_port for n in state.nodes}) == len(state.nodes)


def test_a_tls_clusters_nodes_serve_their_control_ports_with_its_certificate_even_with_plain_clients(
    tmp_path: Path,
) -> None:
    for client_tls in (None, False):
        state = _state(tmp_path, tls=True, client_tls=client_tls)
        tls = state.local_tls
        assert tls is not None
        for node in state.nodes:
            config = plan.node_config(state, node)
            assert (config.tls_cert_file, config.tls_key_file, config.tls_ca_file) == (
                tls.cert_file, tls.key_file, tls.ca_file)
            assert not config.valkey_tls
            # The platform's probes and CLI verify every control port with the cluster's CA.
            assert node.control_ca == tls.ca_file
    plain = _state(tmp_path)
    assert all(plan.node_config(plain, n).tls_files is None and not n.control_ca for n in plain.nodes)
