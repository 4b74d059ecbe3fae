"""A TLS cluster's nodes (`engram local up --tls`): a renewed certificate is served without a
restart, and the control ports speak TLS to the platform, the CLI and each other."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis

from engram.platforms.local import ports
from engram.platforms.local.testing import run_engram, status, wait_for
from tests.certificates import TestCA, serial_of
from tests.integration.workload import control_status

pytestmark = pytest.mark.integration


def _served_serial(address: str, ca_file: str) -> int:
    """The serial of the certificate a fresh TLS handshake with address gets."""
    host, port = address.rsplit(":", 1)
    trusted = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with trusted.wrap_socket(raw, server_hostname=host) as conn:
            return serial_of(conn.getpeercert(binary_form=True))


def test_a_renewed_certificate_is_served_without_a_restart_and_a_broken_pair_is_not(
    local_cluster: Any, short_tmp: Path
) -> None:
    # The cluster's own CA is made with `up` and its key dropped; to renew, bring a CA whose key
    # the test keeps (the platform keeps certificates it finds that cover every address).
    tls = short_tmp / "clusters" / "c0" / "tls"
    tls.mkdir(parents=True)
    ca = TestCA()
    ca.write_ca(tls / "ca.pem")
    cert, key = tls / "server.pem", tls / "server.key"
    first = ca.issue(cert, key, [ports.LOOPBACK])
    doc = local_cluster(replicas=0, tls=True)
    node = doc["nodes"][0]
    ca_file = str(tls / "ca.pem")
    assert _served_serial(node["address"], ca_file) == first
    host, port = node["address"].rsplit(":", 1)
    client = redis.Redis(
        host=host,
        port=int(port),
        ssl=True,
        ssl_ca_certs=ca_file,
        socket_timeout=5,
        single_connection_client=True,
    )
    assert wait_for(lambda: client.set("k", "v"), 30, "a first write")
    connection = client.client_id()

    second = ca.issue(cert, key, [ports.LOOPBACK])
    wait_for(lambda: _served_serial(node["address"], ca_file) == second, 30, "the renewed certificate")
    assert _served_serial(node["admin"], ca_file) == second  # the control port follows too
    # The connection made before the renewal goes on, on the same Valkey client.
    assert client.get("k") == b"v"
    assert client.client_id() == connection

    # A certificate whose key never came: the node says so and serves the one before.
    ca.issue(cert, key, [ports.LOOPBACK], write_key=False)
    log = Path(doc["dir"]) / "logs" / f"{node['id']}.log"
    wait_for(
        lambda: f"certificate {cert} with key {key} not loaded" in log.read_text(),
        30,
        "the node's warning about the broken pair",
    )
    assert _served_serial(node["address"], ca_file) == second
    assert client.set("k2", "v2") and client.client_id() == connection
    fresh = redis.Redis(host=host, port=int(port), ssl=True, ssl_ca_certs=ca_file, socket_timeout=5)
    assert fresh.get("k2") == b"v2"
    client.close()
    fresh.close()


def test_a_tls_clusters_control_ports_serve_status_and_failover_over_tls_only(local_cluster: Any) -> None:
    doc = local_cluster(replicas=1, tls=True)
    ca_file = str(Path(doc["dir"]) / "tls" / "ca.pem")
    assert all(n["admin_ca"] == ca_file for n in doc["nodes"])
    # `engram local status` asks every control port, over TLS.
    roles = sorted(n["role"] for n in status(doc["name"], Path(doc["dir"]).parent)["nodes"])
    assert roles == ["primary", "replica"]
    for node in doc["nodes"]:
        assert control_status(node, socket_timeout=5)["node_id"] == node["id"]
        host, port = node["admin"].rsplit(":", 1)
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host=host, port=int(port), protocol=2, socket_timeout=3).execute_command(
                "ENGRAM.STATUS"
            )
    primary = next(n for n in doc["nodes"] if n["role"] == "primary")
    # The CLI asks the primary, which asks its replica's control port (TLS) before handing over.
    result = run_engram("local", "failover", doc["name"], "--dir", str(Path(doc["dir"]).parent), timeout=90)
    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: (
            next(
                n for n in status(doc["name"], Path(doc["dir"]).parent)["nodes"] if n["id"] == primary["id"]
            )["role"]
            == "replica"
        ),
        30,
        "the old primary to be a replica",
    )
