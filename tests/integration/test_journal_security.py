"""A locked journal (`engram local up --tls`): the cluster works as before, and only its own
processes, with its CA and password, reach the journal; anyone else is refused by nats-server."""

from __future__ import annotations

import asyncio
import json
import ssl
import stat
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import redis

from engram.journal.client import Journal
from engram.journal.security import PLAIN, JournalSecurity
from engram.platforms.local.testing import run_engram, wait_for

pytestmark = pytest.mark.integration


async def _connect(url: str, stream: str, **options: Any) -> str:
    """What a client with these options gets: refused, or the shard's stream as it stands."""
    try:
        nc = await nats.connect([url], connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0,
                                **options)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        info = await nc.jetstream().stream_info(stream)
        return f"stream {stream}: {info.state.messages} entries"
    finally:
        await nc.close()


def test_only_the_clusters_own_processes_reach_a_locked_journal(local_cluster: Any) -> None:
    doc = local_cluster(replicas=1, tls=True)
    tls = Path(doc["dir"]) / "tls"
    host, port = doc["endpoint"].rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_timeout=5, ssl=True,
                         ssl_ca_certs=str(tls / "ca.pem"))
    assert wait_for(lambda: client.set("k", "v"), 30, "a write through the endpoint")
    # The snapshot child and the CLI reach the journal with the cluster's credentials too.
    snapshot = run_engram("local", "snapshot", doc["name"], "--dir", str(Path(doc["dir"]).parent))
    assert snapshot.returncode == 0 and "verified" in snapshot.stdout + snapshot.stderr, snapshot.stderr
    # Secrets are the owner's only.
    for secret in ("journal.password", "route.password", "server.key"):
        assert stat.S_IMODE((tls / secret).stat().st_mode) == 0o600, secret
    assert stat.S_IMODE((Path(doc["dir"]) / "journal" / "a.conf").stat().st_mode) == 0o600

    url = doc["journal"][0]["url"]
    password = (tls / "journal.password").read_text().strip()
    trusted = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    blind = ssl.create_default_context()
    blind.check_hostname, blind.verify_mode = False, ssl.CERT_NONE

    stream = f"ENGRAM_{doc['name']}_0"

    async def attempts() -> dict[str, str]:
        return {
            "TLS, no password": await _connect(url, stream, tls=blind),
            "TLS, wrong password": await _connect(url, stream, tls=blind, user="engram", password="guess"),
            "the system's CAs": await _connect(url, stream, user="engram", password=password),
            "the cluster's own": await _connect(url, stream, tls=trusted, user="engram", password=password),
        }

    seen = asyncio.run(attempts())
    context = json.dumps(seen, indent=2)
    assert "Authorization Violation" in seen["TLS, no password"], context
    assert "Authorization Violation" in seen["TLS, wrong password"], context
    # Without the cluster's CA the server is not trusted, so the password is never sent.
    assert "CERTIFICATE_VERIFY_FAILED" in seen["the system's CAs"], context
    assert seen["the cluster's own"].startswith(f"stream {stream}: "), context

    # Another cluster restored from this one reads its snapshots with this cluster's credentials.
    copy = local_cluster(replicas=0, tls=True, restore_from_cluster=doc["name"])
    host, port = copy["endpoint"].rsplit(":", 1)
    ca = str(Path(copy["dir"]) / "tls" / "ca.pem")
    restored = redis.Redis(host=host, port=int(port), socket_timeout=5, ssl=True, ssl_ca_certs=ca)
    assert wait_for(lambda: restored.get("k"), 30, "the restored key") == b"v"


def test_clients_of_a_tls_cluster_speak_tls_to_every_node_and_plain_is_refused(local_cluster: Any) -> None:
    doc = local_cluster(shards=2, replicas=0, tls=True)
    ca = str(Path(doc["dir"]) / "tls" / "ca.pem")
    host, port = doc["endpoint"].rsplit(":", 1)
    # A stock cluster client with ssl=True: CLUSTER SLOTS names the nodes' TLS ports.
    cluster = redis.RedisCluster(host=host, port=int(port), ssl=True, ssl_ca_certs=ca, socket_timeout=5)
    keys = {f"k{i}": str(i) for i in range(40)}
    for key, value in keys.items():
        assert wait_for(lambda key=key, value=value: cluster.set(key, value), 30, f"SET {key}")
    assert {k: cluster.get(k) for k in keys} == {k: v.encode() for k, v in keys.items()}
    addresses = {f"{n.host}:{n.port}" for n in cluster.get_nodes()}
    assert addresses == {n["address"] for n in doc["nodes"]}
    for node in doc["nodes"]:
        node_host, node_port = node["address"].rsplit(":", 1)
        # Plain text to a TLS port is not RESP to anyone: the connection fails.
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host=node_host, port=int(node_port), socket_timeout=3).ping()
        # And a client that does not trust the cluster's CA does not talk to it.
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            redis.Redis(host=node_host, port=int(node_port), socket_timeout=3, ssl=True).ping()


def _seeded(urls: list[str], cluster: str, shards: int, security: JournalSecurity) -> list[tuple[int, int]]:
    """Each shard's (last, first) entry: seeded, then truncated behind provisioning's first snapshot."""

    async def read() -> list[tuple[int, int]]:
        journal = await Journal.connect(urls, cluster, 0, security=security)
        try:
            states = [await journal.for_shard(shard).state() for shard in range(shards)]
            return [(state.last_seq, state.first_seq) for state in states]
        finally:
            await journal.close()

    return asyncio.run(read())


def test_provision_reads_a_locked_source_with_its_credentials_and_an_open_one_with_none(
    local_cluster: Any,
) -> None:
    """The operator's provisioning Job between two clusters' journals, both ways: an open cluster
    restored from a locked one, and a locked one from an open one."""
    locked, plain = local_cluster(replicas=0, tls=True), local_cluster(replicas=0)
    tls = Path(locked["dir"]) / "tls"
    own = JournalSecurity.from_files("engram", str(tls / "journal.password"), str(tls / "ca.pem"))
    base = str(Path(locked["dir"]).parent)
    for doc, options in ((locked, {"ssl": True, "ssl_ca_certs": str(tls / "ca.pem")}), (plain, {})):
        host, port = doc["endpoint"].rsplit(":", 1)
        client = redis.Redis(host=host, port=int(port), socket_timeout=5, **options)
        assert wait_for(lambda c=client, d=doc: c.set("from", d["name"]), 30, "a write through the endpoint")
        taken = run_engram("local", "snapshot", doc["name"], "--dir", base, timeout=240)
        assert taken.returncode == 0, taken.stderr

    def urls(doc: dict[str, Any]) -> str:
        return ",".join(j["url"] for j in doc["journal"])

    def provision(cluster: str, into: dict[str, Any], source: dict[str, Any], *flags: str) -> Any:
        return run_engram("provision", "--cluster", cluster, "--shards", "2", "--journal", urls(into),
                          "--restore-from-cluster", source["name"], "--restore-journal", urls(source),
                          *flags, timeout=120)

    source_flags = ["--restore-journal-user", "engram", "--restore-journal-password-file",
                    str(tls / "journal.password"), "--restore-journal-ca", str(tls / "ca.pem")]
    # Without the source's credentials its journal refuses: retryable (exit 1), nothing seeded.
    refused = provision("blind", plain, locked, "--timeout", "3")
    assert refused.returncode == 1, refused.stderr
    copy = provision("fromlocked", plain, locked, *source_flags, "--timeout", "30")
    assert copy.returncode == 0 and f"restore: from cluster {locked['name']}" in copy.stderr, copy.stderr
    seeded = _seeded([j["url"] for j in plain["journal"]], "fromlocked", 2, PLAIN)
    assert all(last > 1 and first > last for last, first in seeded), seeded

    # A locked cluster reads an open source's journal without its own TLS and password.
    own_flags = ["--journal-user", "engram", "--journal-password-file", str(tls / "journal.password"),
                 "--journal-ca", str(tls / "ca.pem")]
    back = provision("fromplain", locked, plain, *own_flags, "--timeout", "30")
    assert back.returncode == 0 and f"restore: from cluster {plain['name']}" in back.stderr, back.stderr
    seeded = _seeded([j["url"] for j in locked["journal"]], "fromplain", 2, own)
    assert all(last > 1 and first > last for last, first in seeded), seeded
