"""A cluster's region reaches its nodes' Valkey as the module's `region` argument; no region, no argument."""

from __future__ import annotations

import dataclasses

import pytest

from engram.orchestration.node_config import JournalServer, NodeClusterSettings, NodeIdentity, node_config
from engram.valkey.process import valkey_flags

CLUSTER = NodeClusterSettings(name="demo", cluster_id="id", shards=1,
                              journal=(JournalServer("j-a", "nats://a", "a"),), log_level="info")


def _module_args(flags: list[str]) -> list[str]:
    start = flags.index("--loadmodule") + 2
    end = next(i for i in range(start, len(flags)) if flags[i].startswith("--"))
    return flags[start:end]


def test_a_region_cluster_passes_its_region_to_the_module() -> None:
    config = node_config(dataclasses.replace(CLUSTER, region="eu-west"), NodeIdentity("n", 0, "a"),
                         port=6379, data_dir="/data")
    assert config.region == "eu-west"
    flags = valkey_flags("/s", "/d", module="/engram.so", region=config.region)
    assert _module_args(flags) == ["managed", "1", "region", "eu-west"]


def test_without_a_region_the_module_arguments_are_unchanged() -> None:
    config = node_config(CLUSTER, NodeIdentity("n", 0, "a"), port=6379, data_dir="/data")
    assert config.region == ""
    flags = valkey_flags("/s", "/d", module="/engram.so", region=config.region)
    assert _module_args(flags) == ["managed", "1"]


def test_linked_regions_reach_the_node_config() -> None:
    cluster = dataclasses.replace(CLUSTER, region="east", linked_regions={"west": "demo-west"})
    config = node_config(cluster, NodeIdentity("n", 0, "a"), port=6379, data_dir="/data")
    assert config.linked_regions == {"west": "demo-west"}


@pytest.mark.parametrize(("region", "links", "says"), [
    ("", {"west": "w"}, "needs region"),
    ("east", {"east": "e"}, "own region"),
    ("east", {"West!": "w"}, "region name"),
])
def test_links_that_cannot_work_are_refused_naming_the_field(
    region: str, links: dict[str, str], says: str,
) -> None:
    cluster = dataclasses.replace(CLUSTER, region=region, linked_regions=links)
    with pytest.raises(ValueError, match=says):
        node_config(cluster, NodeIdentity("n", 0, "a"), port=6379, data_dir="/data")
