"""On an Engram primary, Valkey behaves as Valkey: data types, transactions, scripts,
blocking commands, pub/sub, RESP3, and Valkey's own errors for bad input.

Engram always runs in cluster mode (as MemoryDB does), so multi-key commands use hash tags."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from redis.exceptions import MovedError

from engram.cluster.slots import key_hash_slot
from tests.integration.workload import cli_status, client_for, control_status, primary_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(local_cluster_module) -> dict:
    return local_cluster_module(shards=1, replicas=1, lease=2.0)


@pytest.fixture
def primary(cluster) -> redis.Redis:
    client = client_for(primary_of(cli_status(cluster)), socket_timeout=20)
    yield client
    client.close()


@pytest.fixture
def replica_node(cluster) -> dict:
    fresh = cli_status(cluster)
    return next(n for n in fresh["nodes"] if n["role"] == "replica")


def _raw(node_or_client: redis.Redis, payload: bytes, expect_close: bool = False) -> bytes:
    kwargs = node_or_client.connection_pool.connection_kwargs
    with socket.create_connection((kwargs["host"], kwargs["port"]), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            if not expect_close and data.endswith(b"\r\n"):
                break
        return data


def test_strings_and_counters(primary) -> None:
    assert primary.set("s:greeting", "hello")
    assert primary.append("s:greeting", " world") == 11
    assert primary.get("s:greeting") == b"hello world"
    assert primary.incrby("s:counter", 5) == 5
    assert primary.incrbyfloat("s:counter", 0.5) == 5.5
    assert primary.set("s:nx", "1", nx=True) and not primary.set("s:nx", "2", nx=True)
    assert primary.mset({"{s}a": "1", "{s}b": "2"})
    assert primary.mget(["{s}a", "{s}b", "{s}none"]) == [b"1", b"2", None]
    assert primary.set("s:ttl", "x", px=60000) and 0 < primary.pttl("s:ttl") <= 60000
    assert primary.getdel("{s}a") == b"1" and primary.exists("{s}a") == 0


def test_hashes_lists_sets_and_sorted_sets(primary) -> None:
    assert primary.hset("h:user", mapping={"name": "ada", "age": "36"}) == 2
    assert primary.hgetall("h:user") == {b"name": b"ada", b"age": b"36"}
    assert primary.hincrby("h:user", "age", 1) == 37
    assert primary.rpush("{l}q", "a", "b", "c") == 3
    assert primary.lpop("{l}q") == b"a" and primary.lrange("{l}q", 0, -1) == [b"b", b"c"]
    assert primary.lmove("{l}q", "{l}r", "LEFT", "RIGHT") == b"b"
    assert primary.sadd("{set}x", "1", "2", "3") == 3 and primary.sadd("{set}y", "2", "3", "4") == 3
    assert primary.sinter(["{set}x", "{set}y"]) == {b"2", b"3"}
    assert primary.sinterstore("{set}z", ["{set}x", "{set}y"]) == 2
    assert primary.zadd("z:board", {"ann": 3, "bob": 1, "cy": 2}) == 3
    assert primary.zrange("z:board", 0, -1, withscores=True) == [(b"bob", 1.0), (b"cy", 2.0), (b"ann", 3.0)]
    assert primary.zincrby("z:board", 5, "bob") == 6.0
    assert primary.zpopmax("z:board") == [(b"bob", 6.0)]


def test_streams_and_consumer_groups(primary) -> None:
    first = primary.xadd("x:events", {"type": "signup"})
    primary.xadd("x:events", {"type": "login"})
    assert primary.xlen("x:events") == 2
    primary.xgroup_create("x:events", "workers", id="0")
    got = primary.xreadgroup("workers", "w1", {"x:events": ">"}, count=1)
    assert got[0][1][0][0] == first
    assert primary.xack("x:events", "workers", first) == 1


def test_multi_exec_and_watch(primary) -> None:
    pipe = primary.pipeline(transaction=True)
    pipe.set("t:a", 1).incr("t:a").get("t:a")
    assert pipe.execute() == [True, 2, b"2"]

    primary.set("t:watched", "0")
    with primary.pipeline(transaction=True) as pipe:
        pipe.watch("t:watched")
        other = client_for_same(primary)
        other.set("t:watched", "changed")
        pipe.multi()
        pipe.set("t:watched", "mine")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert primary.get("t:watched") == b"changed"


def client_for_same(client: redis.Redis) -> redis.Redis:
    kwargs = client.connection_pool.connection_kwargs
    return redis.Redis(host=kwargs["host"], port=kwargs["port"])


def test_lua_scripts_and_functions(primary) -> None:
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"
    assert primary.eval(script, 2, "{lua}v", "{lua}n", "x") == 1
    assert primary.get("{lua}v") == b"x"
    sha = primary.script_load("return redis.call('GET', KEYS[1])")
    assert primary.evalsha(sha, 1, "{lua}v") == b"x"
    library = (
        "#!lua name=engramtest\n"
        "server.register_function('bump', function(keys, args)\n"
        "  return server.call('INCRBY', keys[1], args[1])\n"
        "end)"
    )
    primary.function_load(library, replace=True)
    assert primary.fcall("bump", 1, "fn:n", 7) == 7


def test_blocking_pop_is_woken_by_a_push_from_another_client(primary) -> None:
    popped: dict[str, object] = {}
    blocker = client_for_same(primary)

    def pop() -> None:
        popped["value"] = blocker.blpop(["b:queue"], timeout=10)

    thread = threading.Thread(target=pop)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    primary.rpush("b:queue", "job")
    thread.join(timeout=10)
    assert popped["value"] == (b"b:queue", b"job")
    assert primary.llen("b:queue") == 0


def test_pubsub_on_the_primary_and_on_a_replica_fed_by_the_journal(primary, replica_node) -> None:
    local = client_for_same(primary).pubsub()
    local.subscribe("news")
    remote = client_for(replica_node).pubsub()
    remote.subscribe("news")
    for ps in (local, remote):
        assert ps.get_message(timeout=5)["type"] == "subscribe"
    deadline = time.monotonic() + 5
    received = {"local": None, "remote": None}
    primary.publish("news", "hello")
    while time.monotonic() < deadline and None in received.values():
        for name, ps in (("local", local), ("remote", remote)):
            if received[name] is None:
                message = ps.get_message(timeout=0.1)
                if message and message["type"] == "message":
                    received[name] = message["data"]
    assert received == {"local": b"hello", "remote": b"hello"}
    local.close()
    remote.close()


def test_resp3_replies_and_push_messages(primary) -> None:
    kwargs = primary.connection_pool.connection_kwargs
    r3 = redis.Redis(host=kwargs["host"], port=kwargs["port"], protocol=3)
    r3.hset("r3:h", mapping={"a": "1"})
    assert r3.hgetall("r3:h") == {b"a": b"1"}
    assert r3.zadd("r3:z", {"m": 1.5}) == 1
    assert r3.zscore("r3:z", "m") == 1.5
    ps = r3.pubsub()
    ps.subscribe("r3chan")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    primary.publish("r3chan", "pushed")
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        candidate = ps.get_message(timeout=0.2)
        if candidate and candidate["type"] == "message":
            message = candidate
    assert message is not None and message["data"] == b"pushed"
    assert r3.set("r3:after-pubsub", "ok") and r3.get("r3:after-pubsub") == b"ok"


def test_pipelined_commands_come_back_in_order(primary) -> None:
    pipe = primary.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"p:{i}", i)
        pipe.get(f"p:{i}")
    results = pipe.execute()
    assert results[0::2] == [True] * 500
    assert results[1::2] == [str(i).encode() for i in range(500)]


def test_client_commands_are_per_connection(primary) -> None:
    other = client_for_same(primary)
    primary.client_setname("engram-a")
    other.client_setname("engram-b")
    assert primary.client_getname() == "engram-a"
    assert other.client_getname() == "engram-b"
    assert primary.client_id() != other.client_id()


def test_unknown_command_and_wrong_arity_get_valkey_errors(primary) -> None:
    with pytest.raises(redis.ResponseError, match="unknown command"):
        primary.execute_command("NOSUCHCOMMAND", "x")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get' command"):
        primary.execute_command("GET")
    assert primary.ping()


def test_malformed_resp_gets_a_protocol_error_and_harms_no_one(primary) -> None:
    primary.set("safe", "kept")
    reply = _raw(primary, b"*1\r\n$abc\r\n", expect_close=True)
    assert reply.startswith(b"-ERR Protocol error: invalid bulk length")
    reply = _raw(primary, b"*2\r\n$3\r\nGET\r\n?oops\r\n", expect_close=True)
    assert reply.startswith(b"-ERR Protocol error: expected '$', got '?'")
    assert primary.get("safe") == b"kept"


def test_oversized_bulk_string_is_refused_like_valkey(primary) -> None:
    reply = _raw(primary, b"*2\r\n$3\r\nSET\r\n$999999999999\r\n", expect_close=True)
    assert reply.startswith(b"-ERR Protocol error: invalid bulk length")
    assert primary.ping()


def test_inline_commands_work(primary) -> None:
    assert _raw(primary, b"PING\r\n") == b"+PONG\r\n"
    assert _raw(primary, b'SET inline:k "a b"\r\n') == b"+OK\r\n"
    assert primary.get("inline:k") == b"a b"


def test_replica_redirects_writes_and_serves_reads_after_readonly(primary, replica_node) -> None:
    primary.set("ro:key", "v")
    replica = client_for(replica_node)
    leader = primary.connection_pool.connection_kwargs
    with pytest.raises(MovedError) as moved:
        replica.set("ro:key", "w")
    assert moved.value.slot_id == key_hash_slot(b"ro:key")
    assert moved.value.node_addr == (leader["host"], leader["port"])
    with pytest.raises(MovedError):
        replica.get("ro:key")
    replica.execute_command("READONLY")
    deadline = time.monotonic() + 5
    while replica.get("ro:key") != b"v":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(MovedError):
        replica.set("ro:key", "w")


def test_engram_status_on_the_control_port_reports_role_epoch_sequences_and_version(
    cluster, replica_node
) -> None:
    primary_node = primary_of(cli_status(cluster))
    fields = control_status(primary_node)
    assert fields["role"] == "primary"
    assert int(fields["epoch"]) >= 1
    assert int(fields["committed_seq"]) >= 1
    assert int(fields["lease_ms"]) > 0
    assert fields["engine_version"]
    assert (fields["address"], fields["admin"]) == (primary_node["address"], primary_node["admin"])
    replica_fields = control_status(replica_node)
    assert replica_fields["role"] == "replica"
    assert replica_fields["leader_id"] == fields["node_id"]
    assert int(replica_fields["lag"]) >= 0 and replica_fields["slots"] == "0-16383"


def test_a_value_larger_than_one_journal_message_reaches_the_replica(primary, replica_node) -> None:
    big = bytes(range(256)) * (6 * 1024)  # 1.5 MiB: three journal messages
    assert primary.set("big:value", big)
    assert primary.get("big:value") == big
    replica = client_for(replica_node)
    replica.execute_command("READONLY")
    deadline = time.monotonic() + 10
    while replica.get("big:value") != big:
        assert time.monotonic() < deadline, "the replica never applied the large value"
        time.sleep(0.1)
    assert primary.set("big:after", "small") and primary.get("big:after") == b"small"
