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
    client = redis.Redis(host=host, port=int(port), socket_timeout=5)
    assert wait_for(lambda: client.set("k", "v"), 30, "a write through the endpoint")
    # The snapshot child and the CLI reach the journal with the cluster's credentials too.
    snapshot = run_engram("local", "snapshot", doc["name"], "--dir", str(Path(doc["dir"]).parent))
    assert snapshot.returncode == 0 and "verified" in snapshot.stdout + snapshot.stderr, snapshot.stderr
    # Secrets are the owner's only.
    for secret in ("journal.password", "route.password", "journal.key"):
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
    assert wait_for(lambda: redis.Redis(host=host, port=int(port), socket_timeout=5).get("k"), 30,
                    "the restored key") == b"v"
