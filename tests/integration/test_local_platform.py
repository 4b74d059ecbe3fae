"""`engram local`: the journal, the supervisor and the CLI, with real nats-server and nodes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import redis
from nats.js import api

from engram.cluster.topology import cluster_node_id
from engram.platforms.local import journal as local_journal
from engram.platforms.local.journal import LocalJournal
from engram.platforms.local.processes import pid_alive
from engram.platforms.local.state import ClusterState, cluster_dir
from engram.platforms.local.testing import force_cleanup, run_engram, status, wait_for

pytestmark = pytest.mark.integration



def _monitor(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return json.load(reply)


def _endpoint(doc: dict[str, Any]) -> redis.Redis:
    host, port = doc["endpoint"].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), protocol=2, socket_timeout=5)


def _write(doc: dict[str, Any], key: str, value: str, timeout: float = 15) -> None:
    """SET through the endpoint, retrying as a client would on TRYAGAIN or MOVED while leadership settles."""
    wait_for(
        lambda: _endpoint(doc).set(key, value), timeout, f"SET {key} to be acknowledged via the endpoint"
    )


def _read(doc: dict[str, Any], key: str, timeout: float = 15) -> bytes | None:
    """GET through the endpoint, retrying while the endpoint catches up with a new primary."""
    return wait_for(lambda: _endpoint(doc).get(key), timeout, f"GET {key} to answer through the endpoint")


def _relayed_to(doc: dict[str, Any], node_id: str) -> bool:
    """Whether the endpoint relays new connections to node_id, asked through the endpoint itself.

    CLUSTER MYID is a data-path command every node answers on its client port; ENGRAM.STATUS is
    only on the control port, which the endpoint never relays to.
    """
    return _endpoint(doc).execute_command("CLUSTER", "MYID") == cluster_node_id(node_id).encode()


def _control(node: dict[str, Any]) -> redis.Redis:
    host, port = node["admin"].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), protocol=2, socket_timeout=5)


def _primary(doc: dict[str, Any], shard: int = 0) -> dict[str, Any] | None:
    return next((n for n in doc["nodes"] if n["shard"] == shard and n["role"] == "primary"), None)


def _node(doc: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in doc["nodes"] if n["id"] == node_id)


def _base(doc: dict[str, Any]) -> str:
    """The --dir the cluster was started with (its status names the cluster's own directory)."""
    return str(Path(doc["dir"]).parent)


def _state(doc: dict[str, Any]) -> ClusterState:
    return ClusterState.load(cluster_dir(_base(doc), doc["name"]) / "state.json")


def _all_pids(doc: dict[str, Any]) -> list[int]:
    children = [n["pid"] for n in doc["nodes"]] + [j["pid"] for j in doc["journal"]]
    return [_state(doc).supervisor_pid or 0, *children]


def _local(doc: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> Any:
    command, rest = args[0], args[1:]
    return run_engram("local", command, doc["name"], *rest, "--dir", _base(doc), env=env)


# ---- the journal -------------------------------------------------------------------------------


def test_journal_forms_one_jetstream_cluster_of_three_zone_tagged_servers(nats_journal: LocalJournal) -> None:
    for server in nats_journal.servers:
        varz = _monitor(server.http_port, "/varz")
        assert varz["tags"] == [f"az:{server.zone}"]
        jsz = _monitor(server.http_port, "/jsz")
        assert jsz["meta_cluster"]["cluster_size"] == 3
        assert jsz["meta_cluster"]["leader"] in {s.name for s in nats_journal.servers}
        assert jsz["config"]["unique_tag"] == "az"
        # Acknowledged means fsynced: docs/durability.md, "When the journal fsyncs".
        assert jsz["config"]["sync_always"] is True


def test_a_three_replica_stream_is_placed_in_three_distinct_zones(nats_journal: LocalJournal) -> None:
    async def check() -> None:
        nc = await nats.connect(nats_journal.urls)
        try:
            js = nc.jetstream(timeout=10)
            cluster = f"{nats_journal.name}-journal"
            info = await js.add_stream(
                api.StreamConfig(
                    name="PLACED", subjects=["placed"], num_replicas=3, storage=api.StorageType.FILE,
                    placement=api.Placement(cluster=cluster),
                )
            )  # fmt: skip
            assert info.cluster is not None
            peers = {info.cluster.leader, *(p.name for p in info.cluster.replicas or [])}
            assert peers == {s.name for s in nats_journal.servers}
            # Three replicas cannot share the one server tagged az:a: placement tags are honoured.
            with pytest.raises(nats.js.errors.BadRequestError):
                await js.add_stream(
                    api.StreamConfig(
                        name="CROWDED", subjects=["crowded"], num_replicas=3,
                        placement=api.Placement(tags=["az:a"]),
                    )
                )  # fmt: skip
        finally:
            await nc.close()

    asyncio.run(check())


def test_journal_acknowledges_with_a_server_killed_and_the_server_rejoins(nats_journal: LocalJournal) -> None:
    async def create_stream() -> None:
        nc = await nats.connect(nats_journal.urls)
        try:
            js = nc.jetstream(timeout=10)
            await js.add_stream(api.StreamConfig(name="LOG", subjects=["log"], num_replicas=3))
        finally:
            await nc.close()

    async def publish_all(count: int) -> list[int]:
        nc = await nats.connect(nats_journal.urls, connect_timeout=2)
        try:
            js = nc.jetstream(timeout=5)
            seqs = []
            deadline = asyncio.get_running_loop().time() + 30
            for i in range(count):
                while True:
                    try:
                        # The same id makes a retry after a lost ack safe.
                        ack = await js.publish("log", b"entry %d" % i, headers={"Nats-Msg-Id": f"e{i}"})
                        seqs.append(ack.seq)
                        break
                    except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
                        # A killed stream leader costs a Raft election: answer "no responders"
                        # or nothing until it is over, as a client would see.
                        assert asyncio.get_running_loop().time() < deadline, "no stream leader in 30 s"
                        await asyncio.sleep(0.2)
            return seqs
        finally:
            await nc.close()

    async def current_replicas() -> int:
        nc = await nats.connect(nats_journal.urls)
        try:
            info = await nc.jetstream().stream_info("LOG")
            return sum(1 for p in (info.cluster.replicas or []) if p.current and not p.offline)  # type: ignore[union-attr]
        finally:
            await nc.close()

    asyncio.run(create_stream())
    nats_journal.kill("a")
    assert asyncio.run(publish_all(5)) == [1, 2, 3, 4, 5]
    nats_journal.restart("a")
    nats_journal.wait_ready()
    wait_for(lambda: asyncio.run(current_replicas()) == 2, 20, "all three stream replicas to be current")


# ---- up and status -------------------------------------------------------------------------------


def test_up_returns_a_serving_cluster_whose_status_has_the_documented_shape(local_cluster: Any) -> None:
    doc = local_cluster(shards=1, replicas=2)
    assert {"name", "endpoint", "nodes", "journal"} <= set(doc)
    assert doc["endpoint"].startswith("127.0.0.1:")
    assert [n["id"] for n in doc["nodes"]] == [f"{doc['name']}-s0-n{i}" for i in range(3)]
    for node in doc["nodes"]:
        assert {"id", "shard", "role", "zone", "address", "admin", "pid", "applied_seq"} <= set(node)
        assert node["shard"] == 0
        assert node["address"].startswith("127.0.0.1:")
        assert node["admin"].startswith("127.0.0.1:") and node["admin"] != node["address"]
        reply = _control(node).execute_command("ENGRAM.STATUS")
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        assert (fields[b"node_id"], fields[b"admin"]) == (node["id"].encode(), node["admin"].encode())
        assert pid_alive(node["pid"])
        assert isinstance(node["applied_seq"], int)
    assert sorted(n["zone"] for n in doc["nodes"]) == ["a", "b", "c"]
    assert sorted(n["role"] for n in doc["nodes"]) == ["primary", "replica", "replica"]
    assert [j["zone"] for j in doc["journal"]] == ["a", "b", "c"]
    for server in doc["journal"]:
        assert server["url"].startswith("nats://127.0.0.1:") and pid_alive(server["pid"])

    _write(doc, "greeting", "hello")
    assert _endpoint(doc).get("greeting") == b"hello"

    again = status(doc["name"], _base(doc))
    assert [(n["id"], n["pid"]) for n in again["nodes"]] == [(n["id"], n["pid"]) for n in doc["nodes"]]


def test_shards_spread_their_nodes_over_distinct_zones(local_cluster: Any) -> None:
    doc = local_cluster(shards=3, replicas=2)
    for shard in range(3):
        assert sorted(n["zone"] for n in doc["nodes"] if n["shard"] == shard) == ["a", "b", "c"]
    assert sorted(_primary(doc, s)["zone"] for s in range(3)) == ["a", "b", "c"]  # type: ignore[index]
    assert _relayed_to(doc, _primary(doc, 0)["id"])  # type: ignore[index]


# ---- restarts -------------------------------------------------------------------------------------


def test_killed_node_is_restarted_with_a_new_pid_and_rejoins_as_a_replica(local_cluster: Any) -> None:
    doc = local_cluster(replicas=2)
    _write(doc, "before", "kill")
    victim = _primary(status(doc["name"], _base(doc)))
    assert victim is not None
    assert _local(doc, "kill", victim["id"]).returncode == 0

    def new_primary() -> dict[str, Any] | None:
        primary = _primary(status(doc["name"], _base(doc)))
        return primary if primary and primary["id"] != victim["id"] else None

    successor = wait_for(new_primary, 30, "another node to become primary")

    def rejoined() -> bool:
        now = status(doc["name"], _base(doc))
        node, primary = _node(now, victim["id"]), _primary(now)
        return (
            node["pid"] != victim["pid"] and node["role"] == "replica" and node["restarts"] == 1
            and primary is not None and node["applied_seq"] >= successor["applied_seq"]
        )  # fmt: skip

    wait_for(rejoined, 30, f"{victim['id']} to come back with a new pid as a caught-up replica")
    assert not pid_alive(victim["pid"])
    assert _read(doc, "before") == b"kill"


def test_killed_journal_server_is_restarted_and_writes_keep_committing(local_cluster: Any) -> None:
    doc = local_cluster(replicas=0)
    old = doc["journal"][0]
    assert _local(doc, "kill", "journal-a").returncode == 0
    _write(doc, "during", "outage", timeout=30)

    def restarted() -> bool:
        server = status(doc["name"], _base(doc))["journal"][0]
        return server["pid"] not in (None, old["pid"]) and server["restarts"] == 1

    wait_for(restarted, 20, "the supervisor to restart journal-a")
    servers = _state(doc).journal
    asyncio.run(local_journal.wait_ready(servers, timeout=30))
    assert _read(doc, "during") == b"outage"
    # A restarted server keeps its share of the cores, like the first start.
    pid = status(doc["name"], _base(doc))["journal"][0]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"GOMAXPROCS={local_journal.go_threads(len(servers))}".encode() in environ


def test_stopped_node_shows_as_down_and_is_not_restarted(local_cluster: Any) -> None:
    doc = local_cluster(replicas=1)
    replica = next(n for n in doc["nodes"] if n["role"] == "replica")
    assert _local(doc, "kill", replica["id"], "--signal", "STOP").returncode == 0
    try:
        node = _node(status(doc["name"], _base(doc)), replica["id"])
        expected = ("down", replica["pid"], replica["restarts"])
        assert (node["role"], node["pid"], node["restarts"]) == expected
    finally:
        _local(doc, "kill", replica["id"], "--signal", "CONT")
    wait_for(
        lambda: _node(status(doc["name"], _base(doc)), replica["id"])["role"] == "replica",
        10, f"{replica['id']} to answer again after SIGCONT",
    )  # fmt: skip


# ---- failover --------------------------------------------------------------------------------------


def test_failover_hands_the_shard_to_a_caught_up_replica(local_cluster: Any) -> None:
    doc = local_cluster(replicas=2)
    _write(doc, "before", "switchover")
    old = _primary(status(doc["name"], _base(doc)))
    assert old is not None
    result = _local(doc, "failover")
    assert result.returncode == 0, result.stderr
    after = status(doc["name"], _base(doc))
    new = _primary(after)
    assert new is not None and new["id"] != old["id"] and new["id"] in result.stderr
    assert _node(after, old["id"])["role"] == "replica"
    assert _read(doc, "before") == b"switchover"


def test_endpoint_follows_the_primary_chosen_with_failover_to(local_cluster: Any) -> None:
    doc = local_cluster(replicas=2)
    target = next(n["id"] for n in doc["nodes"] if n["role"] == "replica")
    result = _local(doc, "failover", "--to", target)
    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: _relayed_to(doc, target),
        5, f"the endpoint to relay to {target}",
    )  # fmt: skip


# ---- down and errors ---------------------------------------------------------------------------------


def test_down_stops_every_process_and_a_second_down_says_not_running(local_cluster: Any) -> None:
    doc = local_cluster(replicas=1)
    pids = _all_pids(doc)
    result = _local(doc, "down")
    assert result.returncode == 0, result.stderr
    assert not [p for p in pids if pid_alive(p)]
    assert not cluster_dir(_base(doc), doc["name"]).exists()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", int(doc["endpoint"].rsplit(":", 1)[1])))  # the endpoint port is free again
    again = _local(doc, "down")
    assert again.returncode != 0
    assert "not running" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_up_refuses_a_busy_port(short_tmp: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_engram("local", "up", "busy", "--port", str(port), "--dir", str(short_tmp))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert not (short_tmp / "busy" / "state.json").exists()


def test_up_refuses_a_name_that_is_already_running(local_cluster: Any) -> None:
    doc = local_cluster(replicas=0)
    result = run_engram("local", "up", doc["name"], "--dir", _base(doc))
    assert result.returncode == 1
    assert "already exists and is running" in result.stderr
    assert f"engram local down {doc['name']}" in result.stderr
    # `make up` a second time: where the running cluster serves, and success.
    again = run_engram("local", "up", doc["name"], "--dir", _base(doc), "--exist-ok", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["endpoint"] == doc["endpoint"]
    assert f"already running; its endpoint is {doc['endpoint']}" in again.stderr
    assert status(doc["name"], _base(doc))["nodes"][0]["pid"] == doc["nodes"][0]["pid"]  # left untouched


def test_up_names_a_missing_nats_server(short_tmp: Path) -> None:
    missing = {"ENGRAM_NATS_SERVER": "/nonexistent"}
    result = run_engram("local", "up", "nobin", "--dir", str(short_tmp), env=missing)
    assert result.returncode == 1
    assert "ENGRAM_NATS_SERVER=/nonexistent" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (short_tmp / "nobin").exists()


def test_a_dead_supervisor_is_reported_with_how_to_clean_up(local_cluster: Any) -> None:
    doc = local_cluster(replicas=1)
    pids = _all_pids(doc)
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: not pid_alive(pids[0]), 10, "the supervisor to die")
    for command in (("status",), ("kill", doc["nodes"][0]["id"])):
        result = _local(doc, *command)
        assert result.returncode == 1
        assert "supervisor" in result.stderr and "is gone" in result.stderr
        assert f"engram local down {doc['name']}" in result.stderr
    again = run_engram("local", "up", doc["name"], "--dir", _base(doc))
    assert again.returncode == 1 and "engram local down" in again.stderr
    # Children die with their supervisor, as pods do with their node.
    wait_for(lambda: not any(pid_alive(p) for p in pids), 15, "the supervisor's children to exit")
    assert _local(doc, "down").returncode == 0
    assert not cluster_dir(_base(doc), doc["name"]).exists()


def test_up_fails_fast_when_nodes_crash_on_start(short_tmp: Path) -> None:
    crash = f"{sys.executable} -c 'import sys; print(\"node exploded\"); sys.exit(3)'"
    result = run_engram(
        "local", "up", "crashy", "--replicas", "0", "--dir", str(short_tmp), "--timeout", "60",
        env={"ENGRAM_NODE_COMMAND": crash}, timeout=90,
    )  # fmt: skip
    assert result.returncode == 1
    assert "keeps crashing" in result.stderr and "node exploded" in result.stderr
    assert not (short_tmp / "crashy" / "state.json").exists()
    assert (short_tmp / "crashy" / "logs").is_dir()  # kept for the post-mortem


def test_down_keep_data_then_up_brings_the_data_back_from_the_journal(short_tmp: Path) -> None:
    base = str(short_tmp)

    def up() -> dict[str, Any]:
        result = run_engram("local", "up", "kept", "--replicas", "1", "--dir", base, "--json", timeout=150)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    try:
        _write(up(), "survivor", "journal")
        assert run_engram("local", "down", "kept", "--dir", base, "--keep-data").returncode == 0
        assert (short_tmp / "kept" / "journal").is_dir() and not (short_tmp / "kept" / "state.json").exists()
        assert _read(up(), "survivor") == b"journal"
    finally:
        run_engram("local", "down", "kept", "--dir", base)
        force_cleanup("kept", base)
