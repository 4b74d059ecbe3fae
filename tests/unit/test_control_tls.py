"""On a TLS cluster the node's control and metrics ports speak TLS only, with the cluster's
certificate, and their clients verify it with the cluster's CA."""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError

import pytest
import redis

from engram import metrics
from engram.node import probe
from engram.node.certificate import CertificateWatch, ServerCertificate, TlsFiles
from engram.node.control import ControlServer
from engram.node.peer import PeerUnreachable, call, control_tls, parse_status
from engram.platforms.local import ports
from tests.certificates import TestCA, serial_of
from tests.threaded_server import serving


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[TestCA, TlsFiles]]:
    ca = TestCA()
    ca.write_ca(tmp_path / "ca.pem")
    files = TlsFiles(str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "ca.pem"))
    ca.issue(Path(files.cert_file), Path(files.key_file), [ports.LOOPBACK])
    yield ca, files


async def _no_switchover(target: str) -> None:
    raise AssertionError("no switchover here")


@contextmanager
def _control(files: TlsFiles) -> Iterator[int]:
    """A control port serving TLS with the files' certificate, on a loop in a thread of its own."""
    control = ControlServer(lambda: {"role": "replica", "halted": "", "lag": "0"}, _no_switchover)
    with serving(lambda port: control.start(ports.LOOPBACK, port,
                                            ServerCertificate(files).serving_context())) as port:
        yield port


def test_the_control_port_answers_tls_clients_that_trust_the_clusters_ca(
    tls: tuple[TestCA, TlsFiles],
) -> None:
    _, files = tls
    with _control(files) as port:
        reply = asyncio.run(
            call(ports.LOOPBACK, port, "ENGRAM.STATUS", timeout=5, tls=control_tls(files.ca_file))
        )
        assert parse_status(reply)["role"] == "replica"
        client = redis.Redis(host=ports.LOOPBACK, port=port, protocol=2, ssl=True, ssl_ca_certs=files.ca_file)
        assert client.execute_command("PING") is True
        client.close()


def test_plain_text_and_other_cas_get_nothing_from_a_tls_control_port(
    tls: tuple[TestCA, TlsFiles], tmp_path: Path
) -> None:
    _, files = tls
    stranger = TestCA()
    stranger.write_ca(tmp_path / "other-ca.pem")
    with _control(files) as port:
        with pytest.raises(PeerUnreachable):
            asyncio.run(call(ports.LOOPBACK, port, "ENGRAM.STATUS", timeout=3))
        with pytest.raises(PeerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(
                call(
                    ports.LOOPBACK,
                    port,
                    "ENGRAM.STATUS",
                    timeout=3,
                    tls=control_tls(str(tmp_path / "other-ca.pem")),
                )
            )
        # A name the certificate does not carry is refused too, unless the caller says it asks loopback.
        with pytest.raises(PeerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(
                call(
                    ports.LOOPBACK,
                    port,
                    "ENGRAM.STATUS",
                    timeout=3,
                    tls=control_tls(files.ca_file),
                    server_hostname="elsewhere.example",
                )
            )


def test_the_readiness_probe_speaks_tls_when_given_the_ca(tls: tuple[TestCA, TlsFiles]) -> None:
    _, files = tls
    with _control(files) as port:
        assert probe.main(["--port", str(port), "--tls-ca", files.ca_file]) == 0
        assert probe.main(["--port", str(port), "--timeout", "2"]) == 1


def test_the_metrics_port_serves_https_and_a_renewed_certificate(tls: tuple[TestCA, TlsFiles]) -> None:
    ca, files = tls
    port = ports.allocate(1)[0]
    certificate = ServerCertificate(files)
    metrics.serve(port, ports.LOOPBACK, certificate)
    trusted = ssl.create_default_context(cafile=files.ca_file)
    url = f"https://{ports.LOOPBACK}:{port}/metrics"
    with urllib.request.urlopen(url, context=trusted, timeout=5) as answer:
        assert b"engram_tls_reloads_total" in answer.read()
    with pytest.raises((URLError, ConnectionError)):  # plain HTTP is not answered
        urllib.request.urlopen(f"http://{ports.LOOPBACK}:{port}/metrics", timeout=5)
    # A client that connects and never shakes hands holds no one else up.
    with socket.create_connection((ports.LOOPBACK, port), timeout=5):
        with urllib.request.urlopen(url, context=trusted, timeout=5) as answer:
            assert answer.status == 200
    watch = CertificateWatch(files, certificate)
    renewed = ca.issue(Path(files.cert_file), Path(files.key_file), [ports.LOOPBACK])
    assert asyncio.run(watch.check()) == "ok"
    with (
        socket.create_connection((ports.LOOPBACK, port), timeout=5) as raw,
        trusted.wrap_socket(raw, server_hostname=ports.LOOPBACK) as conn,
    ):
        assert serial_of(conn.getpeercert(binary_form=True)) == renewed
