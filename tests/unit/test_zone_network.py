"""Planning zone networks (names, addresses, subnets) and how a cluster planned with them is laid out."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from engram.chaos.faults import partition_unavailable
from engram.journal.servers import render_config
from engram.platforms.local import journal, network, plan
from engram.platforms.local.state import ClusterState

NONE_TAKEN: list[ipaddress.IPv4Network] = []


def test_names_fit_linux_limits_and_differ_per_cluster() -> None:
    one = network.plan_network("/var/state/engram/demo", ["a", "b", "c"], NONE_TAKEN)
    two = network.plan_network("/var/state/engram/other", ["a", "b", "c"], NONE_TAKEN)
    names = [one.bridge, *(n for link in one.links for n in (link.host_if, link.zone_if))]
    assert all(len(n) <= network.MAX_IFNAME for n in names)
    assert len(set(names)) == len(names)
    assert one.bridge != two.bridge
    assert {link.namespace for link in one.links}.isdisjoint(link.namespace for link in two.links)


def test_zones_get_distinct_addresses_in_the_bridges_subnet() -> None:
    net = network.plan_network("/x/demo", ["a", "b", "c"], NONE_TAKEN)
    subnet = ipaddress.ip_interface(net.gateway).network
    addresses = [ipaddress.ip_address(link.address) for link in net.links]
    assert len(set(addresses)) == 3
    assert all(a in subnet for a in addresses)
    assert ipaddress.ip_interface(net.gateway).ip not in addresses


def test_a_subnet_in_use_on_the_machine_is_avoided() -> None:
    first = network.plan_network("/x/demo", ["a", "b"], NONE_TAKEN)
    taken = [ipaddress.ip_interface(first.gateway).network]
    second = network.plan_network("/x/demo", ["a", "b"], taken)
    assert not ipaddress.ip_interface(second.gateway).network.overlaps(taken[0])


def test_the_plan_is_deterministic() -> None:
    assert network.plan_network("/x/d", ["a"], NONE_TAKEN) == network.plan_network("/x/d", ["a"], NONE_TAKEN)


def test_a_cluster_with_zone_networks_binds_each_zones_processes_to_its_address(tmp_path: Path) -> None:
    spec = plan.ClusterSpec(name="demo", shards=2, replicas=2, netns=True)
    state = plan.plan(spec, tmp_path / "demo", "nats-server", "valkey-server")
    assert state.network is not None
    address = {link.zone: link.address for link in state.network.links}
    for node in state.nodes:
        assert node.host == address[node.zone]
        assert plan.node_config(state, node).host == address[node.zone]
        # The control port is served on the zone's address too: a partition cuts it off with the node.
        assert node.admin == f"{address[node.zone]}:{node.admin_port}"
        assert plan.node_config(state, node).admin_announce == node.admin
        urls = plan.node_config(state, node).journal_urls
        assert sorted(urls) == sorted(f"nats://{address[j.zone]}:{j.port}" for j in state.journal)
        assert urls[0].startswith(f"nats://{address[node.zone]}:")  # its own zone's server first
    server = state.journal[0]
    text = render_config(journal.server_config(server, state.journal, "demo-journal"))
    assert f'"{address[server.zone]}:{server.port}"' in text
    for peer in state.journal:
        assert f"{address[peer.zone]}:{peer.cluster_port}" in text
    assert state.launcher("b")[-1] == state.network.link("b").namespace


def test_state_with_a_zone_network_round_trips(tmp_path: Path) -> None:
    spec = plan.ClusterSpec(name="demo", netns=True)
    state = plan.plan(spec, tmp_path / "demo", "nats-server", "valkey-server")
    (tmp_path / "demo").mkdir()
    state.save()
    again = ClusterState.load(state.path)
    assert again == state
    assert again.network is not None and again.network.links[0].zone == "a"


def test_without_zone_networks_everything_stays_on_loopback(tmp_path: Path) -> None:
    state = plan.plan(plan.ClusterSpec(name="demo"), tmp_path / "demo", "nats-server", "valkey-server")
    assert state.network is None and state.launcher("a") == []
    assert {n.host for n in state.nodes} | {j.host for j in state.journal} == {"127.0.0.1"}


def test_a_partition_of_a_cluster_sharing_one_network_is_refused_with_the_way_out() -> None:
    assert "--netns" in partition_unavailable(zone_networks=False)

