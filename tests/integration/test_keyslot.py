"""key_hash_slot agrees with a real Valkey's CLUSTER KEYSLOT on thousands of keys."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator

import pytest
from redis.connection import UnixDomainSocketConnection

from engram.cluster.slots import key_hash_slot
from engram.platforms.local import ports
from tests.valkey_process import running_valkey

pytestmark = pytest.mark.integration


def _free_loopback_port() -> int:
    return ports.allocate(1)[0]


@pytest.fixture(scope="module")
def cluster_valkey() -> Iterator[UnixDomainSocketConnection]:
    """A cluster-enabled valkey-server (no slots assigned: KEYSLOT needs none) on a unix socket."""
    with tempfile.TemporaryDirectory(prefix="engram-slot-") as conf_dir:
        cluster = ("--cluster-enabled", "yes", "--cluster-config-file", f"{conf_dir}/nodes.conf",
                   "--cluster-port", str(_free_loopback_port()), "--bind", "127.0.0.1")
        with running_valkey(*cluster, prefix="engram-slot-") as (sock_path, _):
            conn = UnixDomainSocketConnection(path=str(sock_path), protocol=2)
            yield conn
            conn.disconnect()


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
