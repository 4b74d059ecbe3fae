"""Where a shard's stream leader goes: out of its primary's zone, spread over the zones left."""

from __future__ import annotations

from engram.journal.placement import StreamPeer, leader_move
from engram.orchestration.node_config import JournalServer, own_zone_first

ZONES = {"j-a": "a", "j-b": "b", "j-c": "c"}


def peers(leader: str, **followers: tuple[bool, bool]) -> list[StreamPeer]:
    """followers: name -> (current, offline)."""
    return [StreamPeer(leader, leader=True),
            *(StreamPeer(name.replace("_", "-"), current=c, offline=o) for name, (c, o) in followers.items())]


def test_a_leader_in_the_primarys_zone_moves_to_another_zone() -> None:
    assert leader_move(0, "a", peers("j-a", j_b=(True, False), j_c=(True, False)), ZONES) == "b"


def test_shards_spread_their_stream_leaders_over_the_zones_left() -> None:
    group = peers("j-a", j_b=(True, False), j_c=(True, False))
    assert {leader_move(shard, "a", group, ZONES) for shard in range(4)} == {"b", "c"}


def test_a_leader_outside_the_primarys_zone_stays() -> None:
    assert leader_move(0, "a", peers("j-b", j_a=(True, False), j_c=(True, False)), ZONES) is None


def test_only_current_online_followers_qualify() -> None:
    assert leader_move(0, "a", peers("j-a", j_b=(False, False), j_c=(True, False)), ZONES) == "c"
    assert leader_move(0, "a", peers("j-a", j_b=(True, True), j_c=(False, False)), ZONES) is None


def test_unknown_servers_zones_or_no_leader_leave_the_stream_alone() -> None:
    assert leader_move(0, "a", peers("j-x", j_b=(True, False)), ZONES) is None
    assert leader_move(0, "a", peers("j-a", j_x=(True, False)), ZONES) is None
    assert leader_move(0, "", peers("j-a", j_b=(True, False)), ZONES) is None
    assert leader_move(0, "a", [StreamPeer("j-b"), StreamPeer("j-c")], ZONES) is None


def test_zone_names_from_node_labels_match_their_lower_case_tags() -> None:
    assert leader_move(0, "A", peers("j-a", j_b=(True, False)), ZONES) == "b"


def test_a_nodes_journal_urls_put_its_own_zones_servers_first_and_keep_the_rest_in_order() -> None:
    named = [("nats://a1", "a"), ("nats://b1", "B"), ("nats://c1", "c"), ("nats://b2", "b"), ("nats://x", "")]
    servers = [JournalServer(url, url, zone) for url, zone in named]
    assert own_zone_first("b", servers) == ["nats://b1", "nats://b2", "nats://a1", "nats://c1", "nats://x"]
    assert own_zone_first("z", servers) == [s.url for s in servers]
