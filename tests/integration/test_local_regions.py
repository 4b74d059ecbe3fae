"""`engram local up --regions`: two full local clusters, linked, with real nats-servers and nodes
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
from pathlib import Path
from typing import Any

import nats
import pytest
import redis

from engram.journal.client import stream_name
from engram.node.config import NodeConfig
from engram.platforms.local.processes import pid_alive
from engram.platforms.local.testing import force_cleanup, log_tails, run_engram, wait_for

pytestmark = pytest.mark.integration

NAME = "mr"
REGIONS = ("east", "west")


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
                        "--dir", str(base), "--json", timeout=240)
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
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(json.load(reply).get("leafnodes", 0))


def _leafz(region_doc: dict[str, Any], base: Path) -> list[int]:
    """Each journal server's leaf connections, from its monitoring port (state.json has the ports)."""
    state = json.loads((base / region_doc["name"] / "state.json").read_text())
    return [_leafnodes(f"http://{j['host']}:{j['http_port']}/leafz") for j in state["journal"]]


def test_up_starts_a_cluster_per_region_each_serving_at_its_own_endpoint(up: dict[str, Any]) -> None:
    assert up["name"] == NAME and list(up["regions"]) == list(REGIONS)
    endpoints = {doc["endpoint"] for doc in up["regions"].values()}
    assert len(endpoints) == 2
    for region, doc in up["regions"].items():
        assert doc["name"] == f"{NAME}-{region}" and doc["region"] == region
        assert {n["role"] for n in doc["nodes"]} == {"primary", "replica"}
        config = NodeConfig.load(Path(doc["dir"]) / "nodes" / doc["nodes"][0]["id"] / "node.json")
        other = next(r for r in REGIONS if r != region)
        assert config.region == region and config.linked_regions == {other: f"{NAME}-{other}"}


def test_the_regions_journals_are_linked_by_leaf_nodes_and_each_reaches_the_others_domain(
    up: dict[str, Any], base: Path
) -> None:
    east, west = up["regions"]["east"], up["regions"]["west"]
    # west dials (east sorts first and listens): each west server holds one leaf connection, and
    # east's servers hold the three between them.
    assert _leafz(west, base) == [1, 1, 1]
    assert sum(_leafz(east, base)) == 3

    async def reach(from_doc: dict[str, Any], to_region: str) -> int:
        nc = await nats.connect([j["url"] for j in from_doc["journal"]], connect_timeout=5)
        try:
            js = nc.jetstream(domain=to_region, timeout=5)
            info = await js.stream_info(stream_name(f"{NAME}-{to_region}", 0))
            return info.state.last_seq
        finally:
            await nc.close()

    assert asyncio.run(reach(west, "east")) >= 1
    assert asyncio.run(reach(east, "west")) >= 1


def test_status_shows_each_regions_lag_behind_the_other_and_it_drains(up: dict[str, Any], base: Path) -> None:
    def caught_up() -> dict[str, Any] | None:
        doc = _status(base)
        rows = [row for region in REGIONS for row in doc["regions"][region]["lag"]]
        ok = len(rows) == 2 and all(r["not_copied"] == 0 and r["not_applied"] == 0 and not r["error"]
                                    for r in rows)
        return doc if ok else None

    doc = wait_for(caught_up, 60, "each region to have copied and applied everything of the other", 0.5)
    assert [(r["shard"], r["from"]) for r in doc["regions"]["east"]["lag"]] == [(0, "west")]
    assert [(r["shard"], r["from"]) for r in doc["regions"]["west"]["lag"]] == [(0, "east")]
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
                        (["--regions", "east,west,north"], "more than two regions"),
                        (["--regions", "east,West"], "lower-case"),
                        (["--regions", "east,west", "--tls"], "--tls")):
        result = run_engram("local", "up", "other", "--dir", str(base), *extra, timeout=60)
        assert result.returncode == 1 and says in result.stderr, result.stderr
    assert not (base / "other").exists() and not (base / "other-east").exists()


def _converged(doc: dict[str, Any], read: Any) -> Any:
    """What both regions read, once they read the same thing (else None)."""
    east, west = read(_client(doc, "east")), read(_client(doc, "west"))
    return east if east == west and east else None


def test_writes_in_each_region_reach_the_other_and_conflicts_end_alike(up: dict[str, Any]) -> None:
    east, west = _client(up, "east"), _client(up, "west")
    wait_for(lambda: east.set("from-east", "e1"), 30, "east to take a write")
    wait_for(lambda: west.hset("profile", "city", "Oslo"), 30, "west to take a write")
    east.hset("profile", "name", "Ada")
    east.set("both", "east")
    west.set("both", "west")  # the later write: every region must end with it

    assert wait_for(lambda: west.get("from-east"), 60, "east's key in west", 0.2) == b"e1"
    profile = {b"city": b"Oslo", b"name": b"Ada"}
    wait_for(lambda: all(c.hgetall("profile") == profile for c in (east, west)), 60,
             "both regions to hold both hash fields", 0.2)
    assert wait_for(lambda: _converged(up, lambda c: c.get("both")), 60, "both regions to agree on `both`",
                    0.2) == b"west"


def test_with_one_region_down_status_shows_it_down_and_the_others_link_going_idle(
    up: dict[str, Any], base: Path,
) -> None:
    result = run_engram("local", "down", f"{NAME}-west", "--dir", str(base), timeout=120)
    assert result.returncode == 0, result.stderr

    def east_hears_nothing_from_west() -> bool:
        doc = _status(base)
        assert doc["regions"]["west"]["running"] is False and "not running" in doc["regions"]["west"]["error"]
        idle = doc["regions"]["east"]["lag"][0]["idle"]  # None: no contact at all
        return idle is None or idle > 3

    wait_for(east_hears_nothing_from_west, 30, "east's status to show its link to west idle", 0.5)
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
