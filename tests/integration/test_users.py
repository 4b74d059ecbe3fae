"""Users as cluster state on a real local cluster: a user made with ACL SETUSER on one primary
exists on every node of every shard, survives a switchover and a killed node, and its writes are
acknowledged like anyone's; ACL DELUSER removes it everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from engram.cluster.slots import key_hash_slot
from engram.cluster.topology import SlotMap
from engram.platforms.local.testing import run_engram, status, wait_for

pytestmark = pytest.mark.integration

SLOTS = SlotMap.even(2)
RULES = ("on", ">app-secret", "~app:*", "+set", "+get", "+incrby")


def _base(doc: dict[str, Any]) -> str:
    return str(Path(doc["dir"]).parent)


def _conn(node: dict[str, Any], **auth: str) -> redis.Redis:
    host, port = node["address"].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), protocol=2, socket_timeout=5, **auth)


def _nodes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return status(doc["name"], _base(doc))["nodes"]


def _primary(doc: dict[str, Any], shard: int) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((n for n in _nodes(doc) if n["shard"] == shard and n["role"] == "primary"), None)

    return wait_for(find, 30, f"shard {shard} to have a primary")


def _can_auth(node: dict[str, Any], user: str, password: str) -> bool:
    try:
        # Credentials at connect: redis-py's first commands would fail if the default user is off.
        return bool(_conn(node, username=user, password=password).execute_command("AUTH", user, password))
    except redis.AuthenticationError:
        return False


def _everywhere(doc: dict[str, Any], user: str, password: str, present: bool) -> None:
    for node in _nodes(doc):
        wait_for(
            lambda node=node: _can_auth(node, user, password) is present,
            20, f"{user} to be {'present' if present else 'gone'} on {node['id']}",
        )  # fmt: skip


def _local(doc: dict[str, Any], *args: str) -> Any:
    return run_engram("local", args[0], doc["name"], *args[1:], "--dir", _base(doc))


def test_a_user_made_on_one_primary_serves_on_every_node_and_outlives_failover_and_restart(
    local_cluster: Any,
) -> None:
    doc = local_cluster(shards=2, replicas=1)
    primary = _primary(doc, 0)
    admin = _conn(primary)
    made = wait_for(lambda: admin.execute_command("ACL", "SETUSER", "app", *RULES), 20, "ACL SETUSER")
    assert made == b"OK"
    # Acknowledged means stored: the other shard and every replica have the user.
    _everywhere(doc, "app", "app-secret", present=True)
    # A restricted user's writes are acknowledged like anyone's, on whichever shard owns the key.
    for shard in (0, 1):
        client = _conn(_primary(doc, shard), username="app", password="app-secret")
        tag = next(f"{{t{i}}}" for i in range(100) if SLOTS.owner(key_hash_slot(f"t{i}".encode())) == shard)
        assert client.set(f"app:{tag}", "v") is True and client.incr(f"app:{tag}:n") == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set(f"other:{tag}", "v")
    # A replica refuses a change of users: they change through a primary.
    replica = next(n for n in _nodes(doc) if n["role"] == "replica")
    with pytest.raises(redis.ResponseError, match="this node is a replica"):
        _conn(replica).execute_command("ACL", "SETUSER", "sneaky", "on")

    # A planned switchover and a killed node: users come back from the metadata, not from Valkey.
    assert _local(doc, "failover", "--shard", "0").returncode == 0
    victim = _primary(doc, 1)
    assert _local(doc, "kill", victim["id"], "--signal", "KILL").returncode == 0
    wait_for(lambda: _restarted(doc, victim), 60, f"{victim['id']} to be restarted")
    _everywhere(doc, "app", "app-secret", present=True)

    # A deleted user is gone everywhere, and the default user can be given a password.
    admin = _conn(_primary(doc, 1))
    assert wait_for(lambda: admin.execute_command("ACL", "DELUSER", "app") == 1, 20, "ACL DELUSER")
    _everywhere(doc, "app", "app-secret", present=False)
    assert _conn(_primary(doc, 0)).execute_command("ACL", "SETUSER", "default", ">topsecret") == b"OK"
    for node in _nodes(doc):
        wait_for(lambda node=node: _needs_password(node), 20, f"the default user's password on {node['id']}")
        assert _conn(node, password="topsecret").ping()


def _restarted(doc: dict[str, Any], victim: dict[str, Any]) -> bool:
    node = next(n for n in _nodes(doc) if n["id"] == victim["id"])
    return node["pid"] != victim["pid"] and node["role"] in ("primary", "replica")


def _needs_password(node: dict[str, Any]) -> bool:
    try:
        _conn(node).ping()
    except redis.AuthenticationError:
        return True
    return False


def test_users_declared_in_a_file_reach_every_node_refuse_clients_and_follow_the_file(
    local_cluster: Any, tmp_path: Path
) -> None:
    users = tmp_path / "users.acl"
    users.write_text("# declared\nuser ops on >ops-pw ~* &* +@all\n")
    doc = local_cluster(shards=1, replicas=1, users=str(users))
    _everywhere(doc, "ops", "ops-pw", present=True)
    primary = _primary(doc, 0)
    with pytest.raises(redis.ResponseError, match="user 'ops' is declared in the cluster's configuration"):
        _conn(primary).execute_command("ACL", "SETUSER", "ops", "off")
    # Edited in place: a new password, and the default user turned off.
    users.write_text("user ops on >new-pw ~* &* +@all\nuser default off\n")
    _everywhere(doc, "ops", "new-pw", present=True)
    for node in _nodes(doc):
        wait_for(lambda node=node: _needs_password(node), 20, f"the default user to be off on {node['id']}")
    ops = _conn(_primary(doc, 0), username="ops", password="new-pw")
    assert ops.set("k", "v") is True and ops.get("k") == b"v"
