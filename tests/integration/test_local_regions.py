"""`engram local up --regions`: three full local clusters, each linked to both others, with real
nats-servers and nodes
(docs/multi-region.md, "A local multi-region cluster"). The regions share one cluster for the whole
module; the last test takes it down.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from engram import binaries
from engram.journal.client import stream_name
from engram.multiregion.link import INBOUND_ACCOUNT
from engram.node.config import NodeConfig
from engram.platforms.local.processes import pid_alive
from engram.platforms.local.testing import force_cleanup, log_tails, run_engram, wait_for

pytestmark = pytest.mark.integration

NAME = "mr"
REGIONS = ("east", "west", "south")


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="eg-r-", dir="/tmp"))
    try:
        yield directory
    finally:
        result = run_engram("local", "down", NAME, "--dir", str(directory), timeout=120)
        for region in REGIONS:
            if result.returncode != 0:
                print(f"=== logs of region {region}\n{log_tails(f'{NAME}-{region}', directory)}")
            force_cleanup(f"{NAME}-{region}", directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def up(base: Path) -> dict[str, Any]:
    result = run_engram("local", "up", NAME, "--regions", ",".join(REGIONS), "--replicas", "1",
                        "--counters", "hits:*", "--ttls", "session:*", "--dir", str(base), "--json",
                        timeout=240)
    if result.returncode != 0:
        pytest.fail(f"engram local up --regions failed (exit {result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout)


def _status(base: Path) -> dict[str, Any]:
    result = run_engram("local", "status", NAME, "--dir", str(base), "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _client(doc: dict[str, Any], region: str) -> redis.Redis:
    host, port = doc["regions"][region]["endpoint"].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), protocol=2, socket_timeout=5)


def _leafnodes(url: str) -> int:
    """How many of a journal server's own links to other regions are up (bound to its inbound account)."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        leafs = json.load(reply).get("leafs") or []
    return sum(1 for leaf in leafs if leaf.get("account") == INBOUND_ACCOUNT)


def _leafz(region_doc: dict[str, Any], base: Path) -> list[int]:
    """Each journal server's links to other regions, from its monitoring port (state.json has the ports)."""
    state = json.loads((base / region_doc["name"] / "state.json").read_text())
    return [_leafnodes(f"http://{j['host']}:{j['http_port']}/leafz") for j in state["journal"]]


def test_up_starts_a_cluster_per_region_each_serving_at_its_own_endpoint(up: dict[str, Any]) -> None:
    assert up["name"] == NAME and list(up["regions"]) == list(REGIONS)
    endpoints = {doc["endpoint"] for doc in up["regions"].values()}
    assert len(endpoints) == 3
    for region, doc in up["regions"].items():
        assert doc["name"] == f"{NAME}-{region}" and doc["region"] == region
        assert {n["role"] for n in doc["nodes"]} == {"primary", "replica"}
        config = NodeConfig.load(Path(doc["dir"]) / "nodes" / doc["nodes"][0]["id"] / "node.json")
        assert config.region == region
        assert config.linked_regions == {r: f"{NAME}-{r}" for r in REGIONS if r != region}


def test_the_regions_journals_are_linked_by_leaf_nodes_and_each_reaches_the_others_domain(
    up: dict[str, Any], base: Path
) -> None:
    # Every server of every region holds a link to each of the two other regions: a triangle NATS
    # would refuse as a loop if the links shared an account.
    for region in REGIONS:
        assert _leafz(up["regions"][region], base) == [2, 2, 2], region

    async def reach(from_doc: dict[str, Any], to_region: str) -> int:
        nc = await nats.connect([j["url"] for j in from_doc["journal"]], connect_timeout=5)
        try:
            js = nc.jetstream(domain=to_region, timeout=5)
            info = await js.stream_info(stream_name(f"{NAME}-{to_region}", 0))
            return info.state.last_seq
        finally:
            await nc.close()

    for region in REGIONS:
        for other in REGIONS:
            if other != region:
                assert asyncio.run(reach(up["regions"][region], other)) >= 1, (region, other)


def test_status_shows_each_regions_lag_behind_the_other_and_it_drains(up: dict[str, Any], base: Path) -> None:
    def caught_up() -> dict[str, Any] | None:
        doc = _status(base)
        rows = [row for region in REGIONS for row in doc["regions"][region]["lag"]]
        ok = len(rows) == 6 and all(r["not_copied"] == 0 and r["not_applied"] == 0 and not r["error"]
                                    for r in rows)
        return doc if ok else None

    doc = wait_for(caught_up, 90, "each region to have copied and applied everything of the others", 0.5)
    for region in REGIONS:
        assert sorted((r["shard"], r["from"]) for r in doc["regions"][region]["lag"]) == sorted(
            (0, other) for other in REGIONS if other != region)
    text = run_engram("local", "status", NAME, "--dir", str(base), timeout=60)
    assert text.returncode == 0 and "region west: lag behind the other regions" in text.stdout


def test_a_second_up_is_refused_and_with_exist_ok_says_where_it_serves(
    up: dict[str, Any], base: Path
) -> None:
    argv = ["local", "up", NAME, "--regions", ",".join(REGIONS), "--dir", str(base)]
    again = run_engram(*argv, timeout=60)
    assert again.returncode == 1 and "already running" in again.stderr
    shown = run_engram(*argv, "--exist-ok", "--json", timeout=60)
    assert shown.returncode == 0, shown.stderr
    for region in REGIONS:
        assert f"{region} at {up['regions'][region]['endpoint']}" in shown.stderr
    single = run_engram("local", "up", NAME, "--dir", str(base), timeout=60)
    assert single.returncode == 1 and "is a multi-region cluster" in single.stderr


def test_what_cannot_work_is_refused_before_anything_starts(base: Path) -> None:
    for extra, says in ((["--regions", "east"], "needs two regions"),
                        (["--regions", "a,b,c,d,e,f"], "at most 5"),
                        (["--regions", "east,West"], "lower-case"),
                        (["--regions", "east,west", "--netns"], "--netns"),
                        (["--regions", "east,west", "--counters", "a b"], "no spaces")):
        result = run_engram("local", "up", "other", "--dir", str(base), *extra, timeout=60)
        assert result.returncode == 1 and says in result.stderr, result.stderr
    result = run_engram("local", "up", "other", "--dir", str(base), "--counters", "hits:*", timeout=60)
    assert result.returncode == 2 and "--counters needs --regions" in result.stderr, result.stderr
    assert not (base / "other").exists() and not (base / "other-east").exists()


def _converged(doc: dict[str, Any], read: Any) -> Any:
    """What every region reads, once they all read the same thing (else None)."""
    seen = [read(_client(doc, region)) for region in REGIONS]
    return seen[0] if seen[0] and all(s == seen[0] for s in seen) else None


def test_writes_in_each_region_reach_the_others_and_conflicts_end_alike(
    up: dict[str, Any], base: Path,
) -> None:
    east, west, south = (_client(up, r) for r in REGIONS)
    wait_for(lambda: east.set("from-east", "e1"), 30, "east to take a write")
    wait_for(lambda: west.hset("profile", "city", "Oslo"), 30, "west to take a write")
    wait_for(lambda: south.sadd("seen-by", "south"), 30, "south to take a write")
    east.hset("profile", "name", "Ada")
    south.hset("profile", "lang", "en")
    east.sadd("seen-by", "east")
    east.set("both", "east")
    south.set("both", "south")
    west.set("both", "west")  # the last write: every region must end with it

    for region in ("west", "south"):
        assert wait_for(lambda r=region: _client(up, r).get("from-east"), 60, f"east's key in {region}",
                        0.2) == b"e1"
    profile = {b"city": b"Oslo", b"name": b"Ada", b"lang": b"en"}
    wait_for(lambda: all(c.hgetall("profile") == profile for c in (east, west, south)), 60,
             "every region to hold every hash field", 0.2)
    wait_for(lambda: all(c.smembers("seen-by") == {b"east", b"south"} for c in (east, west, south)), 60,
             "every region to hold both set members", 0.2)
    assert wait_for(lambda: _converged(up, lambda c: c.get("both")), 60, "every region to agree on `both`",
                    0.2) == b"west"
    # West's primary measured how long east's writes took to commit in west's journal.
    lags = _apply_lags(_status(base)["regions"]["west"])
    assert lags["east"][0] > 0 and 0 < lags["east"][1] / lags["east"][0] < 10, lags


def _apply_lags(region_doc: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """engram_region_apply_lag_seconds' count and sum per source region, from the region's primary's
    metrics page (ENGRAM.METRICS on its control port)."""
    primary = next(n for n in region_doc["nodes"] if n["role"] == "primary")
    host, port = primary["admin"].rsplit(":", 1)
    control = redis.Redis(host=host, port=int(port), socket_timeout=5)
    try:
        page = control.execute_command("ENGRAM.METRICS").decode()
    finally:
        control.close()
    at = {"engram_region_apply_lag_seconds_count": 0, "engram_region_apply_lag_seconds_sum": 1}
    samples: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name in at:
                samples.setdefault(sample.labels["region"], [0.0, 0.0])[at[sample.name]] = sample.value
    return {source: (count, total) for source, (count, total) in samples.items()}


def test_increments_of_an_additive_counter_from_every_region_add_up(up: dict[str, Any]) -> None:
    clients = {region: _client(up, region) for region in REGIONS}
    for region, client in clients.items():
        wait_for(lambda c=client: c.ping(), 30, f"{region} to answer")

    def increment(region: str) -> None:
        client = _client(up, region)
        for _ in range(25):
            client.incrby("hits:home", 2)  # a counter: every region's increments count
            client.incrby("score", 1)  # no pattern matches: one region's full value wins

    # Concurrent, in all three regions at once.
    with ThreadPoolExecutor(len(REGIONS)) as pool:
        list(pool.map(increment, REGIONS))
    assert wait_for(lambda: _converged(up, lambda c: c.get("hits:home")), 60,
                    "every region to count every increment", 0.2) == b"150"
    score = wait_for(lambda: _converged(up, lambda c: c.get("score")), 60, "every region to agree on score",
                     0.2)
    assert 25 <= int(score) <= 75
    refused = clients["west"].execute_command
    with pytest.raises(redis.ResponseError, match="INCRBYFLOAT is refused on an additive counter"):
        refused("INCRBYFLOAT", "hits:home", "0.5")


def test_a_ttl_set_in_one_region_reaches_the_others_and_the_key_expires_everywhere(
    up: dict[str, Any],
) -> None:
    east = _client(up, "east")
    assert wait_for(lambda: east.set("session:1", "alice", px=4000), 30, "east to take a write")
    deadline = east.execute_command("PEXPIRETIME", "session:1")
    for region in ("west", "south"):
        client = _client(up, region)
        assert wait_for(lambda c=client: c.get("session:1"), 60, f"the session in {region}", 0.1) == b"alice"
        # The TTL came with the value: the same deadline in every region.
        assert client.execute_command("PEXPIRETIME", "session:1") == deadline
    # Once the deadline passes, every region has deleted it.
    wait_for(lambda: not any(_client(up, r).exists("session:1") for r in REGIONS), 30,
             "the session to expire in every region", 0.2)
    # A key no ttls pattern matches still refuses a TTL.
    with pytest.raises(redis.ResponseError, match="only on keys of a ttls pattern"):
        east.set("plain", "v", ex=10)


def _cut(doc: dict[str, Any]) -> set[tuple[str, ...]]:
    return {tuple(link["regions"]) for link in doc["links"] if link["cut"]}


def test_a_cut_off_region_keeps_taking_writes_and_converges_once_the_link_heals(
    up: dict[str, Any], base: Path,
) -> None:
    east, west, south = (_client(up, r) for r in REGIONS)
    cut = run_engram("local", "partition", NAME, "south", "--dir", str(base), "--json", timeout=120)
    assert cut.returncode == 0, cut.stderr
    # South is cut off from both others; east and west stay linked.
    assert _cut(json.loads(cut.stdout)) == {("east", "south"), ("south", "west")}

    # Every region still acknowledges writes, south included.
    assert wait_for(lambda: south.set("cut:k", "south"), 30, "south to take a write while cut off")
    south.set("cut:only-south", "s")
    south.hset("cut:h", "from-south", "1")
    south.incrby("hits:cut", 5)
    east.incrby("hits:cut", 7)
    west.hset("cut:h", "from-west", "1")
    east.set("cut:k", "east")  # the later write: every region must end with it
    # East's write reaches west, so the link that is not cut carries writes...
    assert wait_for(lambda: west.get("cut:k"), 60, "east's write in west", 0.2) == b"east"
    assert wait_for(lambda: east.hget("cut:h", "from-west"), 60, "west's field in east", 0.2) == b"1"
    # ...while nothing crosses the cut, either way.
    assert south.get("cut:k") == b"south" and south.hget("cut:h", "from-west") is None
    assert east.get("cut:only-south") is None and west.get("cut:only-south") is None
    # South's writes wait in its journal: the others' status shows them not copied.
    wait_for(lambda: all(row["not_copied"] for r in ("east", "west")
                         for row in _status(base)["regions"][r]["lag"] if row["from"] == "south"),
             30, "east and west to show south's writes not copied", 0.5)
    # A snapshot of east would let it drop the entries south has not copied: it is held back.
    snap = run_engram("local", "snapshot", f"{NAME}-east", "--dir", str(base), timeout=120)
    assert snap.returncode == 0, snap.stderr
    assert "journal truncation held back" in snap.stderr and "south" in snap.stderr, snap.stderr
    refused = run_engram("local", "partition", NAME, "north", "--dir", str(base), timeout=60)
    assert refused.returncode == 1 and "no region north" in refused.stderr, refused.stderr

    healed = run_engram("local", "heal", NAME, "--dir", str(base), "--json", timeout=120)
    assert healed.returncode == 0, healed.stderr
    assert _cut(json.loads(healed.stdout)) == set()
    assert wait_for(lambda: _converged(up, lambda c: c.get("cut:only-south")), 60,
                    "south's write in every region", 0.2) == b"s"
    assert wait_for(lambda: _converged(up, lambda c: c.get("cut:k")), 60, "every region to agree on cut:k",
                    0.2) == b"east"
    assert wait_for(lambda: _converged(up, lambda c: c.get("hits:cut")), 60,
                    "every region to count both sides' increments", 0.2) == b"12"
    assert wait_for(lambda: _converged(up, lambda c: c.hgetall("cut:h")), 60, "both sides' fields everywhere",
                    0.2) == {b"from-south": b"1", b"from-west": b"1"}


def test_upgrade_and_scale_change_every_region_in_turn_and_resharding_is_refused(
    up: dict[str, Any], base: Path, tmp_path: Path,
) -> None:
    east = _client(up, "east")
    wait_for(lambda: east.set("before-the-roll", "e"), 30, "east to take a write")
    # The same binary under another path: a different valkey-server as far as the upgrade can tell.
    other = tmp_path / "valkey-server-next"
    other.symlink_to(binaries.find("valkey-server"))
    rolled = run_engram("local", "upgrade", NAME, "--dir", str(base), "--valkey-server", str(other), "--json",
                        timeout=600)
    assert rolled.returncode == 0, rolled.stderr
    said = rolled.stderr.splitlines()
    # One region after another, in --regions order.
    firsts = [next(i for i, line in enumerate(said) if f"region {r}:" in line) for r in REGIONS]
    assert firsts == sorted(firsts), rolled.stderr
    for region, doc in json.loads(rolled.stdout)["regions"].items():
        assert {n["valkey_server"] for n in doc["nodes"]} == {str(other)}, (region, doc["nodes"])

    # Down to no replica: quick (nothing to catch up), and each region must keep its primary.
    scaled = run_engram("local", "scale", NAME, "--dir", str(base), "--replicas", "0", "--json", timeout=600)
    assert scaled.returncode == 0, scaled.stderr
    for region, doc in json.loads(scaled.stdout)["regions"].items():
        assert [n["role"] for n in doc["nodes"]] == ["primary"], region
    for region in REGIONS:
        assert wait_for(lambda r=region: _client(up, r).get("before-the-roll"), 60,
                        f"the key written before the roll in {region}", 0.2) == b"e"

    refused = run_engram("local", "scale", NAME, "--dir", str(base), "--shards", "2", timeout=60)
    assert refused.returncode == 2 and "multi-region cluster" in refused.stderr, refused.stderr


def test_with_one_region_down_status_shows_it_down_and_the_others_link_going_idle(
    up: dict[str, Any], base: Path,
) -> None:
    result = run_engram("local", "down", f"{NAME}-west", "--dir", str(base), timeout=120)
    assert result.returncode == 0, result.stderr

    def east_hears_nothing_from_west() -> bool:
        doc = _status(base)
        assert doc["regions"]["west"]["running"] is False and "not running" in doc["regions"]["west"]["error"]
        from_west = next(r for r in doc["regions"]["east"]["lag"] if r["from"] == "west")
        idle = from_west["idle"]  # None: no contact at all
        return idle is None or idle > 3

    wait_for(east_hears_nothing_from_west, 30, "east's status to show its link to west idle", 0.5)
    # The others stay linked to each other: no region is a hub the rest depend on.
    east, south = _client(up, "east"), _client(up, "south")
    wait_for(lambda: east.set("while-west-is-down", "e2"), 30, "east to take a write")
    assert wait_for(lambda: south.get("while-west-is-down"), 60, "east's write in south", 0.2) == b"e2"
    text = run_engram("local", "status", NAME, "--dir", str(base), timeout=60)
    assert text.returncode == 0 and f"cluster {NAME}-west is down" in text.stdout


def test_down_stops_every_region_and_a_second_down_says_nothing_runs(up: dict[str, Any], base: Path) -> None:
    pids = [n["pid"] for doc in up["regions"].values() for n in doc["nodes"]]
    pids += [j["pid"] for doc in up["regions"].values() for j in doc["journal"]]
    result = run_engram("local", "down", NAME, "--dir", str(base), timeout=120)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, "every node and journal server to exit")
    assert not (base / NAME).exists()
    assert not any((base / f"{NAME}-{r}").exists() for r in REGIONS)
    again = run_engram("local", "down", NAME, "--dir", str(base), timeout=60)
    assert again.returncode == 1 and "not running" in again.stderr
