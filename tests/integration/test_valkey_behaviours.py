"""Valkey's behaviour is the reference: each case runs on a stock valkey-server and on an Engram
primary, side by side, and must give the same answers. Every case here failed on the Python front
door that served clients before the data path moved into Valkey (issue 12)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tests.integration.workload import cli_status, client_for, primary_of
from tests.valkey_process import running_valkey

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(local_cluster_module) -> dict:
    return local_cluster_module(shards=1, replicas=1, lease=2.0)


@pytest.fixture(scope="module")
def plain() -> Iterator[str]:
    with running_valkey(prefix="eg-ref-") as (sock, _):
        yield str(sock)


def _engram(cluster: dict, **kwargs: object) -> redis.Redis:
    return client_for(primary_of(cli_status(cluster)), socket_timeout=20, **kwargs)


def _reference(path: str, **kwargs: object) -> redis.Redis:
    return redis.Redis(unix_socket_path=path, socket_timeout=20, **kwargs)


def _both(cluster: dict, plain: str, **kwargs: object) -> list[redis.Redis]:
    return [_reference(plain, **kwargs), _engram(cluster, **kwargs)]


def _raw_socket(client: redis.Redis) -> socket.socket:
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(kwargs["path"])
    else:
        sock = socket.create_connection((kwargs["host"], kwargs["port"]))
    sock.settimeout(10)
    return sock


def _exchange(client: redis.Redis, payload: bytes, until: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; read until the reply ends with `until` or the server closes (→ closed)."""
    with _raw_socket(client) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not data.endswith(until):
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
        return data, False


def _error_text(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except redis.ResponseError as exc:
        return str(exc)
    raise AssertionError("expected an error reply")


def _answer(call: object) -> object:
    """The reply, or the error's text: what a side-by-side comparison compares."""
    try:
        return call()  # type: ignore[operator]
    except redis.ResponseError as exc:
        return f"error: {exc}"


def _another(client: redis.Redis, **overrides: object) -> redis.Redis:
    """A second connection to the same server (unix socket or TCP alike)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, **overrides}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def test_a_busy_script_is_killed_from_another_connection_and_the_shard_keeps_serving(cluster, plain) -> None:
    outcomes = []
    for client in _both(cluster, plain):
        client.config_set("busy-reply-threshold", 200)
        result: list[str] = []
        busy = threading.Thread(
            target=lambda c=client, r=result: r.append(_error_text(
                lambda: c.eval("local i = 0 while true do i = i + 1 end", 0))),
            daemon=True,
        )
        busy.start()
        killer = _another(client)
        deadline = time.monotonic() + 30
        while True:
            try:
                killer.script_kill()
                break
            except redis.ResponseError as exc:  # NOTBUSY until the script has started
                assert "NOTBUSY" in str(exc), exc
            except redis.exceptions.BusyLoadingError:
                pass
            assert time.monotonic() < deadline, "SCRIPT KILL never got through to the busy script"
            time.sleep(0.02)
        busy.join(30)
        assert result, "the script's caller never heard back"
        assert client.set("after-kill", "1")
        assert client.get("after-kill") == b"1"
        outcomes.append(result[0].split(" script:")[0])
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("rules", [["+set", "+get"], ["+@all", "-wait"], ["+@read", "+@write"]])
def test_users_need_no_extra_acl_rights_for_their_writes_to_be_acknowledged(cluster, plain, rules) -> None:
    answers = []
    for admin in _both(cluster, plain):
        admin.acl_setuser("app", enabled=True, passwords=["+secret"], keys=["~*"], commands=rules, reset=True)
        user = _another(admin, username="app", password="secret")
        seen = [user.set("acl-key", "v"), user.get("acl-key")]
        seen.append(_error_text(lambda u=user: u.execute_command("DBSIZE")) if "+set" in rules else "")
        answers.append(seen)
        user.close()
    assert answers[0] == answers[1]
    assert answers[1][:2] == [True, b"v"]


def test_client_reply_off_and_skip_silence_exactly_the_replies_valkey_silences(cluster, plain) -> None:
    payload = (
        b"CLIENT REPLY SKIP\r\nSET r1 1\r\nSET r2 2\r\nCLIENT REPLY OFF\r\nSET r3 3\r\nINCR r3\r\n"
        b"CLIENT REPLY ON\r\nGET r3\r\n"
    )
    replies = [_exchange(c, payload, b"$1\r\n4\r\n")[0] for c in _both(cluster, plain)]
    assert replies[0] == b"+OK\r\n+OK\r\n$1\r\n4\r\n"
    assert replies[1] == replies[0]


def test_unsubscribe_without_subscriptions_answers_as_valkey(cluster, plain) -> None:
    for command in (b"UNSUBSCRIBE\r\n", b"PUNSUBSCRIBE\r\n", b"SUNSUBSCRIBE\r\n"):
        replies = [_exchange(c, command + b"PING\r\n", b"+PONG\r\n")[0] for c in _both(cluster, plain)]
        assert replies[1] == replies[0], command


@pytest.mark.parametrize("payload", [b"*1\r\n$abc\r\n", b"*2\r\n+SET\r\n", b'SET "unbalanced x\r\n'])
def test_malformed_protocol_is_refused_as_valkey_refuses_it(cluster, plain, payload) -> None:
    results = [_exchange(c, payload, b"\r\n") for c in _both(cluster, plain)]
    assert results[1] == results[0]
    assert results[0][0].startswith(b"-ERR Protocol error")


def test_wait_inside_a_script_answers_as_valkey(cluster, plain) -> None:
    clients = _both(cluster, plain)
    bad = "return redis.call('WAIT', 'x', 0)"
    assert _answer(lambda: clients[1].eval(bad, 0)) == _answer(lambda: clients[0].eval(bad, 0))
    # The count differs by design: an Engram primary has one replica, the journal's tap.
    good = "redis.call('SET', KEYS[1], 'v') return redis.call('WAIT', 0, 0)"
    counts = [c.eval(good, 1, "wait-key") for c in clients]
    assert [type(n) for n in counts] == [int, int]
    assert clients[1].get("wait-key") == b"v"


def test_a_subscriber_that_does_not_read_is_cut_off_by_valkeys_output_limit(cluster, plain) -> None:
    for client in _both(cluster, plain):
        client.config_set("client-output-buffer-limit", "pubsub 256kb 0 0")
        with _raw_socket(client) as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.sendall(b"SUBSCRIBE firehose\r\n")
            deadline = time.monotonic() + 10
            while client.pubsub_numsub("firehose")[0][1] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            message = b"x" * 65536
            deadline = time.monotonic() + 30
            while client.pubsub_numsub("firehose")[0][1] == 1:
                client.publish("firehose", message)
                assert time.monotonic() < deadline, "the slow subscriber was never disconnected"
