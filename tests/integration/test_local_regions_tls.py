"""`engram local up --regions ... --tls`: the regions' links run over TLS with the link's password,
each journal takes only its own cluster's user, and writes still flow between the regions."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import redis

from engram.platforms.local.testing import force_cleanup, log_tails, run_engram, wait_for

pytestmark = pytest.mark.integration

NAME = "mrt"
REGIONS = ("east", "west")


@pytest.fixture(scope="module")
def up() -> Iterator[tuple[Path, dict[str, Any]]]:
    base = Path(tempfile.mkdtemp(prefix="eg-rt-", dir="/tmp"))
    try:
        result = run_engram("local", "up", NAME, "--regions", ",".join(REGIONS), "--replicas", "0", "--tls",
                            "--dir", str(base), "--json", timeout=240)
        if result.returncode != 0:
            pytest.fail(f"engram local up --regions --tls failed (exit {result.returncode}):\n"
                        f"{result.stderr}")
        yield base, json.loads(result.stdout)
    finally:
        result = run_engram("local", "down", NAME, "--dir", str(base), timeout=120)
        for region in REGIONS:
            if result.returncode != 0:
                print(f"=== logs of region {region}\n{log_tails(f'{NAME}-{region}', base)}")
            force_cleanup(f"{NAME}-{region}", base)
        shutil.rmtree(base, ignore_errors=True)


def _client(base: Path, doc: dict[str, Any], region: str) -> redis.Redis:
    host, port = doc["regions"][region]["endpoint"].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), protocol=2, socket_timeout=5, ssl=True,
                       ssl_ca_certs=str(base / f"{NAME}-{region}" / "tls" / "ca.pem"))


def _server_info(port: int) -> dict[str, Any]:
    """The INFO a NATS listener greets a new connection with, before any TLS or login."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        line = conn.recv(4096).split(b"\r\n", 1)[0]
    assert line.startswith(b"INFO "), line
    return dict(json.loads(line[5:]))


def test_every_leafnode_port_demands_tls_and_a_login(up: tuple[Path, dict[str, Any]]) -> None:
    base, _ = up
    for region in REGIONS:
        state = json.loads((base / f"{NAME}-{region}" / "state.json").read_text())
        for port in state["leaf_ports"].values():
            info = _server_info(int(port))
            assert info["tls_required"] is True and info["auth_required"] is True, info


def test_writes_flow_both_ways_over_the_locked_link(up: tuple[Path, dict[str, Any]]) -> None:
    base, doc = up
    east, west = _client(base, doc, "east"), _client(base, doc, "west")
    wait_for(lambda: east.set("locked", "east"), 30, "east to take a write")
    wait_for(lambda: west.hset("profile", "city", "Oslo"), 30, "west to take a write")
    assert wait_for(lambda: west.get("locked"), 60, "east's write in west", 0.2) == b"east"
    assert wait_for(lambda: east.hget("profile", "city"), 60, "west's write in east", 0.2) == b"Oslo"


def test_a_journal_client_without_the_clusters_password_is_refused(up: tuple[Path, dict[str, Any]]) -> None:
    base, doc = up
    ca = str(base / f"{NAME}-east" / "tls" / "ca.pem")

    async def connect(user: str, password: str) -> None:
        context = ssl.create_default_context(cafile=ca)
        nc = await nats.connect([j["url"] for j in doc["regions"]["east"]["journal"]], user=user,
                                password=password, tls=context, connect_timeout=3, allow_reconnect=False,
                                max_reconnect_attempts=0)
        await nc.close()

    # The link's own users log in only on the leafnode port, and guessing the engine's fails.
    with pytest.raises(Exception, match="Authorization"):
        asyncio.run(connect("link-west", "wrong"))
    with pytest.raises(Exception, match="Authorization"):
        asyncio.run(connect("engram", "wrong"))


def test_status_reads_every_regions_lag_through_its_locked_journal(up: tuple[Path, dict[str, Any]]) -> None:
    base, _ = up

    def drained() -> bool:
        result = run_engram("local", "status", NAME, "--dir", str(base), "--json", timeout=60)
        assert result.returncode == 0, result.stderr
        rows = [row for doc in json.loads(result.stdout)["regions"].values() for row in doc["lag"]]
        return len(rows) == 2 and all(r["not_copied"] == 0 and not r["error"] for r in rows)

    wait_for(drained, 60, "both regions' lag to be read, with no error, and drained", 0.5)
