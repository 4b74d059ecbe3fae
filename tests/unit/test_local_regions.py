"""A local multi-region cluster's layout, links, refusals and lag figures (platforms/local/regions.py),
decided without starting anything."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from engram import binaries
from engram.node.config import NodeConfig
from engram.platforms.local import cluster, multi_region, plan
from engram.platforms.local.cluster import AlreadyExists, LocalError, NotRunning
from engram.platforms.local.multi_region import refused_options
from engram.platforms.local.regions import (
    InboundView,
    RegionsError,
    RegionsRecord,
    check_regions,
    lag_lines,
    lag_row,
    link_blocks,
    load_record,
    plan_links,
    port_bases,
    record_path,
    region_cluster,
    relay_port_bases,
)
from engram.platforms.local.state import replace_file

ZONES = ("a", "b", "c")


def _links() -> dict:
    return plan_links("mr", ["west", "east"], ZONES, {"east": [7001, 7002, 7003], "west": [7101, 7102, 7103]},
                      "127.0.0.1", "pw")


def test_each_region_is_a_cluster_named_after_the_multi_region_cluster_and_the_region() -> None:
    assert region_cluster("mr", "east") == "mr-east"
    assert RegionsRecord("mr", ("east", "west")).clusters == {"east": "mr-east", "west": "mr-west"}


@pytest.mark.parametrize("regions, says", [
    (["east"], "needs two regions"),
    ([], "needs two regions"),
    (["east", "east"], "twice"),
    (["East", "west"], "lower-case"),
    (["east", "west", "north", "south", "up", "down"], "at most 5"),
])
def test_regions_that_cannot_form_a_multi_region_cluster_are_refused(regions: list[str], says: str) -> None:
    with pytest.raises(RegionsError, match=says):
        check_regions("mr", regions)


def test_a_region_whose_cluster_name_would_be_too_long_is_refused() -> None:
    with pytest.raises(RegionsError, match="NAME-<region>"):
        check_regions("n" * 36, ["east", "west"])


def test_every_region_listens_on_a_port_per_zone_and_dials_every_other_regions_ports() -> None:
    links = _links()
    east, west = links["east"], links["west"]
    assert east.listen == (("a", 7001), ("b", 7002), ("c", 7003))
    assert west.listen == (("a", 7101), ("b", 7102), ("c", 7103))
    assert west.dials == (("east", ("nats-leaf://127.0.0.1:7001", "nats-leaf://127.0.0.1:7002",
                                    "nats-leaf://127.0.0.1:7003")),)
    assert east.dials == (("west", ("nats-leaf://127.0.0.1:7101", "nats-leaf://127.0.0.1:7102",
                                    "nats-leaf://127.0.0.1:7103")),)
    assert east.linked == (("west", "mr-west"),) and west.linked == (("east", "mr-east"),)
    assert east.password == west.password == "pw"


def test_three_regions_each_dial_both_others() -> None:
    links = plan_links("mr", ["east", "west", "south"], ZONES,
                       {"east": [1, 2, 3], "west": [4, 5, 6], "south": [7, 8, 9]}, "127.0.0.1", "pw")
    assert [r for r, _ in links["south"].dials] == ["east", "west"]
    assert dict(links["south"].linked) == {"east": "mr-east", "west": "mr-west"}


def test_a_region_without_a_leafnode_port_per_zone_is_refused() -> None:
    with pytest.raises(RegionsError, match="needs 3 leafnode ports"):
        plan_links("mr", ["east", "west"], ZONES, {"east": [7001], "west": [1, 2, 3]}, "127.0.0.1", "pw")


def test_a_servers_link_blocks_hold_its_listener_and_a_remote_per_other_region() -> None:
    blocks = link_blocks("west", "127.0.0.1", 7101, {"east": ["nats-leaf://127.0.0.1:7001"]}, "pw")
    text = "\n".join(blocks)
    assert 'listen: "127.0.0.1:7101"' in text and "no_advertise: true" in text
    assert '"nats-leaf://link-west:pw@127.0.0.1:7001"' in text


def test_with_a_base_port_each_region_takes_its_clusters_ports_then_a_leafnode_port_per_zone() -> None:
    assert port_bases(7000, 2, 10, 3) == [7000, 7013]
    assert port_bases(None, 2, 10, 3) == [None, None]


def test_with_a_base_port_the_link_relays_take_blocks_after_every_regions_own() -> None:
    # Three regions of 10 ports and 3 zones: their blocks end at 7000 + 3 x 13; each region's relays
    # (3 zones x 2 other regions) follow, one block after the other.
    assert relay_port_bases(7000, 3, 10, 3) == [7039, 7045, 7051]
    assert relay_port_bases(None, 3, 10, 3) == [None, None, None]


def test_options_a_multi_region_cluster_cannot_take_are_named() -> None:
    spec = plan.ClusterSpec("mr")
    assert refused_options(spec) == []
    assert refused_options(replace(spec, tls=True)) == []  # a locked link: test_local_regions_tls.py
    assert refused_options(replace(spec, netns=True))[0].startswith("--netns")
    assert refused_options(replace(spec, restore_cluster="other"))[0].startswith("--restore-from")


def test_the_record_names_the_regions_in_order_and_reads_back(tmp_path: Path) -> None:
    record = RegionsRecord("mr", ("west", "east"))
    assert load_record(tmp_path, "mr") is None
    path = record_path(tmp_path, "mr")
    path.parent.mkdir()
    replace_file(path, record.to_json())
    assert load_record(tmp_path, "mr") == record


def _region_state(tmp_path: Path, region: str) -> plan.ClusterState:
    spec = plan.ClusterSpec(region_cluster("mr", region), replicas=1, region_link=_links()[region])
    return plan.plan(spec, tmp_path / region, "nats-server", "valkey-server")


def test_a_regions_nodes_know_their_region_and_the_other_regions_cluster(tmp_path: Path) -> None:
    state = _region_state(tmp_path, "west")
    config = plan.node_config(state, state.nodes[0])
    assert config.region == "west" and config.linked_regions == {"east": "mr-east"}
    plan.write_files(state)
    assert NodeConfig.load(state.nodes[0].config).linked_regions == {"east": "mr-east"}


def test_a_regions_journal_is_its_own_domain_and_its_leafnode_config_is_valid(tmp_path: Path) -> None:
    for region in ("east", "west"):
        state = _region_state(tmp_path, region)
        plan.write_files(state)
        for server in state.journal:
            text = Path(server.config).read_text()
            assert f'domain: "{region}"' in text
            other = "west" if region == "east" else "east"
            assert "no_advertise: true" in text and f'"nats-leaf://link-{region}:pw@127.0.0.1:' in text
            assert f'account: "OUT_{other}"' in text
            check = subprocess.run([binaries.find("nats-server"), "-t", "-c", server.config],
                                   capture_output=True, text=True)
            assert check.returncode == 0, check.stderr


def test_a_cluster_that_is_no_region_has_no_domain_and_no_links(tmp_path: Path) -> None:
    state = plan.plan(plan.ClusterSpec("solo", replicas=0), tmp_path, "nats-server", "valkey-server")
    plan.write_files(state)
    text = Path(state.journal[0].config).read_text()
    assert "domain" not in text and "leafnodes" not in text
    assert plan.node_config(state, state.nodes[0]).region == ""


def test_lag_counts_origin_entries_not_copied_from_both_journals_and_copied_ones_not_applied() -> None:
    row = lag_row(InboundView(0, "east", origin_last=120, copied_through=100, source_lag=3, idle=0.4,
                              inbound_last=100, applied_next=91))
    assert row == {"shard": 0, "from": "east", "not_copied": 20, "not_applied": 10, "idle": 0.4, "error": ""}


def test_lag_falls_back_to_nats_own_figure_when_the_origin_does_not_answer() -> None:
    row = lag_row(InboundView(1, "east", copied_through=100, source_lag=7, idle=float("inf"), inbound_last=5,
                              applied_next=1, error="origin stream: TimeoutError"))
    assert row["not_copied"] == 7 and row["not_applied"] == 5 and row["idle"] is None


def test_lag_of_a_missing_inbound_stream_is_unknown_and_says_why() -> None:
    row = lag_row(InboundView(0, "west", origin_last=12, error="no inbound stream yet"))
    assert row["not_copied"] is None and row["not_applied"] is None
    assert row["error"] == "no inbound stream yet"


def test_nothing_is_unapplied_once_the_applier_passed_the_last_entry() -> None:
    assert lag_row(InboundView(0, "west", 5, 5, 0, 0.1, inbound_last=5, applied_next=6))["not_applied"] == 0


def test_the_lag_table_shows_unknown_figures_as_question_marks() -> None:
    lines = lag_lines("west", [lag_row(InboundView(0, "east", origin_last=3, copied_through=3, idle=0.25,
                                                   inbound_last=3, applied_next=2)),
                               lag_row(InboundView(1, "east", error="no inbound stream yet"))])
    assert lines[0] == "region west: lag behind the other regions"
    assert lines[2].split() == ["0", "east", "0", "2", "0.2s"]
    assert lines[3].split()[:5] == ["1", "east", "?", "?", "?"]
    assert lag_lines("west", []) == []


def _write_record(base: Path, regions: tuple[str, ...]) -> None:
    path = record_path(base, "mr")
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, RegionsRecord("mr", regions).to_json())


def _claim(base: Path, name: str) -> None:
    """A state file, as a cluster of that name has while it runs (nothing is started here)."""
    (base / name).mkdir(parents=True, exist_ok=True)
    (base / name / "state.json").write_text("{}")


def test_up_refuses_a_name_a_single_region_cluster_holds(tmp_path: Path) -> None:
    _claim(tmp_path, "mr")
    with pytest.raises(LocalError, match="single-region cluster"):
        multi_region.up(plan.ClusterSpec("mr"), ["east", "west"], tmp_path)


def test_up_refuses_other_regions_than_the_recorded_ones(tmp_path: Path) -> None:
    _write_record(tmp_path, ("east", "west"))
    with pytest.raises(LocalError, match="regions east,west, not east,north"):
        multi_region.up(plan.ClusterSpec("mr"), ["east", "north"], tmp_path)


def test_up_of_a_running_multi_region_cluster_is_already_exists(tmp_path: Path) -> None:
    _write_record(tmp_path, ("east", "west"))
    for region in ("east", "west"):
        _claim(tmp_path, f"mr-{region}")
    with pytest.raises(AlreadyExists, match="already running"):
        multi_region.up(plan.ClusterSpec("mr"), ["east", "west"], tmp_path)


def test_up_refuses_a_region_whose_cluster_name_is_taken(tmp_path: Path) -> None:
    _claim(tmp_path, "mr-west")
    with pytest.raises(LocalError, match="cluster mr-west already exists"):
        multi_region.up(plan.ClusterSpec("mr"), ["east", "west"], tmp_path)
    assert load_record(tmp_path, "mr") is None


def test_a_single_region_up_refuses_the_name_of_a_multi_region_cluster(tmp_path: Path) -> None:
    _write_record(tmp_path, ("east", "west"))
    with pytest.raises(LocalError, match="is a multi-region cluster"):
        cluster.up(plan.ClusterSpec("mr"), tmp_path)


def test_down_of_a_multi_region_cluster_with_no_region_running_says_so_and_forgets_it(tmp_path: Path) -> None:
    _write_record(tmp_path, ("east", "west"))
    with pytest.raises(NotRunning, match="no region of mr was running"):
        multi_region.down(tmp_path, "mr")
    assert load_record(tmp_path, "mr") is None and not (tmp_path / "mr").exists()
    with pytest.raises(NotRunning, match="not a multi-region cluster"):
        multi_region.down(tmp_path, "mr")
