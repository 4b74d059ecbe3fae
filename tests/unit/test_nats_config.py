"""The rendered nats-server configuration of a journal server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from engram import binaries
from engram.journal.security import JournalSecurity, JournalSecurityError
from engram.journal.servers import JournalAuth, JournalServerConfig, render_config, route_url, zone_tag
from engram.platforms.local.tls import LocalTLS

ROUTES = tuple(route_url(f"journal-{i}.journal", 6222) for i in range(3))


def _config(**overrides: object) -> JournalServerConfig:
    values: dict[str, object] = {
        "server_name": "demo-journal-a",
        "zone": "a",
        "store_dir": "/data/jetstream",
        "cluster_name": "demo-journal",
        "routes": ROUTES,
        "host": "127.0.0.1",
        "port": 4222,
        "cluster_port": 6222,
        "http_port": 8222,
    }
    values.update(overrides)
    return JournalServerConfig(**values)  # type: ignore[arg-type]


def test_config_names_the_server_and_tags_it_with_its_zone() -> None:
    text = render_config(_config(zone="us-east-1a"))
    assert 'server_name: "demo-journal-a"' in text
    assert 'server_tags: ["az:us-east-1a"]' in text
    assert zone_tag("us-east-1a") == "az:us-east-1a"


def test_jetstream_places_replicas_in_distinct_zones_and_fsyncs_every_write_by_default() -> None:
    text = render_config(_config())
    block = re.search(r"jetstream \{(.*?)\}", text, re.S)
    assert block, text
    assert 'store_dir: "/data/jetstream"' in block[1]
    assert 'unique_tag: "az"' in block[1]
    assert 'sync_interval: "always"' in block[1]


def test_sync_interval_can_be_relaxed_to_a_duration_but_not_to_nonsense() -> None:
    assert 'sync_interval: "1s"' in render_config(_config(sync_interval="1s"))
    with pytest.raises(ValueError, match=r"journal sync must be .always. or a duration"):
        _config(sync_interval="sometimes")


def test_max_payload_stays_at_one_mebibyte() -> None:
    assert "max_payload: 1048576" in render_config(_config())


def test_cluster_block_lists_the_routes_to_every_peer() -> None:
    text = render_config(_config(cluster_host="0.0.0.0"))
    block = re.search(r"cluster \{(.*)\}", text, re.S)
    assert block, text
    assert 'name: "demo-journal"' in block[1]
    assert 'listen: "0.0.0.0:6222"' in block[1]
    for route in ROUTES:
        assert f'"{route}"' in block[1]


def test_client_and_monitoring_ports_listen_on_the_configured_host() -> None:
    text = render_config(_config(host="127.0.0.1", port=4301, http_port=8301))
    assert 'listen: "127.0.0.1:4301"' in text
    assert 'http: "127.0.0.1:8301"' in text
    assert "http:" not in render_config(_config(http_port=None))


def test_a_single_server_without_routes_has_no_cluster_block() -> None:
    assert "cluster {" not in render_config(_config(routes=()))


def test_storage_limits_are_written_only_when_set() -> None:
    assert "max_file_store" not in render_config(_config())
    text = render_config(_config(max_file_store=10 * 2**30, max_memory_store=2**30))
    assert "max_file_store: 10737418240" in text
    assert "max_memory_store: 1073741824" in text


def test_zone_names_that_would_break_the_tag_are_refused() -> None:
    with pytest.raises(ValueError, match="zone"):
        _config(zone="Zone A")


def test_strings_are_quoted_so_paths_with_spaces_survive() -> None:
    assert 'store_dir: "/var/lib/my data/js"' in render_config(_config(store_dir="/var/lib/my data/js"))


@pytest.mark.integration
def test_nats_server_accepts_the_rendered_config(tmp_path: Path) -> None:
    path = tmp_path / "a.conf"
    path.write_text(render_config(_config(store_dir=str(tmp_path))))
    command = [binaries.find("nats-server"), "--config", str(path), "-t"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout


def test_a_locked_journal_has_tls_on_both_ports_and_separate_client_and_route_users(tmp_path: Path) -> None:
    tls = LocalTLS(tmp_path / "tls")
    tls.ensure(["127.0.0.1", "10.9.0.2"])
    auth = JournalAuth("engram", "s3cret", "engram-route", "r0ute")
    text = render_config(_config(store_dir=str(tmp_path), tls=tls.server_tls(), auth=auth))
    assert text.count(f'cert_file: "{tls.cert_file}"') == 2  # client port and routes
    assert 'users: [{user: "engram", password: "s3cret"}]' in text
    assert 'user: "engram-route"' in text and "nats-route://engram-route:r0ute@journal-0.journal:6222" in text
    path = tmp_path / "a.conf"
    path.write_text(text)
    result = subprocess.run([binaries.find("nats-server"), "--config", str(path), "-t"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout
    # The certificate names every address a journal server listens on.
    cert = x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.9.0.2"}
    # Made once: a second ensure keeps the files a running journal uses.
    before = Path(tls.cert_file).read_bytes(), Path(tls.password_file).read_text()
    tls.ensure(["127.0.0.1"])
    assert (Path(tls.cert_file).read_bytes(), Path(tls.password_file).read_text()) == before


def test_credentials_that_would_break_a_route_url_are_refused() -> None:
    with pytest.raises(ValueError, match="route password must be letters, digits"):
        JournalAuth("engram", "ok", "route", "p@ss:word")


def test_journal_security_reads_its_password_file_and_names_what_is_wrong(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("hunter2\n")
    security = JournalSecurity.from_files("engram", str(password))
    assert security.connect_options() == {"user": "engram", "password": "hunter2"}
    assert not JournalSecurity().enabled and security.enabled
    with pytest.raises(JournalSecurityError, match=r"journal password file .*missing: No such file"):
        JournalSecurity.from_files("engram", str(tmp_path / "missing"))
    with pytest.raises(JournalSecurityError, match="needs a journal user"):
        JournalSecurity.from_files("", str(password))
    with pytest.raises(JournalSecurityError, match=r"journal CA file .*nope\.pem: no such file"):
        JournalSecurity.from_files("engram", str(password), str(tmp_path / "nope.pem"))
