"""The orchestration core's node configuration: what it decides, and what it leaves to a platform."""

from __future__ import annotations

import pytest

from engram.orchestration.node_config import (
    JournalServer,
    NodeClusterSettings,
    NodeIdentity,
    node_config,
    stream_replicas,
)

JOURNAL = (JournalServer("j-a", "nats://a", "a"), JournalServer("j-b", "nats://b", "b"),
           JournalServer("j-x", "nats://x"), JournalServer("j-c", "nats://c", "c"))
CLUSTER = NodeClusterSettings(name="demo", cluster_id="id", shards=3, journal=JOURNAL, log_level="info")


def test_streams_keep_one_copy_per_journal_server_and_at_most_three() -> None:
    assert [stream_replicas(n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]
    assert CLUSTER.journal_replicas == 3


def test_a_node_knows_the_shard_count_its_own_zone_first_and_only_real_journal_zones() -> None:
    config = node_config(CLUSTER, NodeIdentity("demo-2-0", 2, "c", preferred_primary=True),
                         port=6379, data_dir="/data")
    assert (config.shard, config.shards, config.preferred_primary) == (2, 3, True)
    assert config.journal_urls == ["nats://c", "nats://a", "nats://b", "nats://x"]
    assert config.journal_zones == {"j-a": "a", "j-b": "b", "j-c": "c"}


def test_a_platform_cannot_decide_a_cluster_field_itself() -> None:
    with pytest.raises(TypeError, match="shards"):
        node_config(CLUSTER, NodeIdentity("n", 0, "a"), port=6379, data_dir="/data", shards=1)
