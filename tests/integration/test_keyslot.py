"""key_hash_slot agrees with a real Valkey's CLUSTER KEYSLOT on thousands of keys."""

from __future__ import annotations

import random
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.connection import UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from engram import binaries
from engram.cluster.slots import key_hash_slot

pytestmark = pytest.mark.integration


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster_valkey() -> Iterator[UnixDomainSocketConnection]:
    """A cluster-enabled valkey-server (no slots assigned: KEYSLOT needs none) on a unix socket."""
    with tempfile.TemporaryDirectory(prefix="engram-slot-") as tmp:
        sock_path = Path(tmp) / "valkey.sock"
        proc = subprocess.Popen(
            [
                binaries.find("valkey-server"),
                "--port", "0",
                "--bind", "127.0.0.1",
                "--unixsocket", str(sock_path),
                "--unixsocketperm", "700",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(Path(tmp) / "nodes.conf"),
                "--cluster-port", str(_free_loopback_port()),
                "--save", "",
                "--appendonly", "no",
                "--dir", tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            conn = _connect(proc, sock_path)
            yield conn
            conn.disconnect()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _connect(
    proc: subprocess.Popen[bytes], sock_path: Path, timeout: float = 10.0
) -> UnixDomainSocketConnection:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"valkey-server exited with {proc.returncode}: {err}")
        if sock_path.exists():
            conn = UnixDomainSocketConnection(path=str(sock_path), protocol=2)
            try:
                conn.send_command("PING")
                conn.read_response()
                return conn
            except RedisConnectionError:
                conn.disconnect()
        time.sleep(0.05)
    raise RuntimeError(f"valkey-server did not listen on {sock_path} within {timeout}s")


def _keyslots(conn: UnixDomainSocketConnection, keys: list[bytes]) -> list[int]:
    """CLUSTER KEYSLOT for every key, pipelined."""
    conn.send_packed_command(conn.pack_commands([("CLUSTER", "KEYSLOT", key) for key in keys]))
    return [conn.read_response() for _ in keys]


def _keys() -> list[bytes]:
    rng = random.Random(16384)  # fixed: a failure must reproduce
    alphabet = b"{}ab"
    keys: list[bytes] = [b"", b"{", b"}", b"{}", b"}{", b"{{}}", b"{{a}}", b"{a}}", b"a{", b"a}"]
    keys += [rng.randbytes(rng.randint(1, 40)) for _ in range(1500)]
    # Short keys over a tiny alphabet hit every brace arrangement many times over.
    keys += [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(1500)]
    for _ in range(800):
        tag = rng.randbytes(rng.randint(0, 6)).replace(b"}", b"")
        keys.append(rng.randbytes(rng.randint(0, 5)) + b"{" + tag + b"}" + rng.randbytes(rng.randint(0, 5)))
    keys += [f"用户:{i}:{{标签{i % 7}}}".encode() for i in range(200)]
    keys += [f"user:{{{i}}}:{{x}}".encode() for i in range(200)]
    return keys


def test_key_hash_slot_matches_cluster_keyslot(cluster_valkey: UnixDomainSocketConnection) -> None:
    keys = _keys()
    assert len(keys) > 4000
    expected = _keyslots(cluster_valkey, keys)
    mismatches = [
        (k, key_hash_slot(k), s) for k, s in zip(keys, expected, strict=True) if key_hash_slot(k) != s
    ]
    assert mismatches == []


def test_hash_tag_edge_cases_match_cluster_keyslot(cluster_valkey: UnixDomainSocketConnection) -> None:
    keys = [
        b"{}",
        b"foo{}{bar}",
        b"{{a}}",
        b"foo{{bar}}zap",
        b"foo{bar}{zap}",
        b"{",
        b"abc{",
        b"}{a}",
        b"\x00{\xff}\x00",
    ]
    assert [key_hash_slot(k) for k in keys] == _keyslots(cluster_valkey, keys)
