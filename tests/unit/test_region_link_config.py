"""A region's journal config for a multi-region cluster: its JetStream domain and leafnodes block,
and the inbound stream that sources another region's shard stream (engram.multiregion)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engram import binaries
from engram.journal.servers import JournalServerConfig, render_config
from engram.multiregion.inbound import InboundError, InboundLink, SourceHeader, inbound_config
from engram.multiregion.link import (
    LeafListener,
    LinkAuth,
    LinkConfigError,
    RegionRemote,
    api_prefix,
    leaf_url,
    leafnodes_block,
    links_of,
)
from engram.platforms.local.tls import LocalTLS


def _server(tmp_path: Path, **overrides: object) -> JournalServerConfig:
    values: dict[str, object] = {"server_name": "eu-journal-a", "zone": "a", "store_dir": str(tmp_path),
                                 "cluster_name": "eu-journal", "port": 4222, "http_port": 8222}
    values.update(overrides)
    return JournalServerConfig(**values)  # type: ignore[arg-type]


def _accepted(tmp_path: Path, text: str) -> None:
    path = tmp_path / "server.conf"
    path.write_text(text)
    result = subprocess.run([binaries.find("nats-server"), "--config", str(path), "-t"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout + text


def test_a_region_journal_has_its_own_jetstream_domain_and_a_leafnode_port(tmp_path: Path) -> None:
    block = leafnodes_block(LeafListener("127.0.0.1", 7422))
    text = render_config(_server(tmp_path, jetstream_domain="eu", extra_blocks=(block,)))
    assert '  domain: "eu"' in text
    assert 'listen: "127.0.0.1:7422"' in text
    # Remotes dial the addresses they were given, never ones the servers advertise.
    assert "no_advertise: true" in text
    _accepted(tmp_path, text)


def test_the_dialling_region_lists_every_server_of_the_other_region(tmp_path: Path) -> None:
    urls = tuple(leaf_url(f"journal-{i}.eu.example", 7422) for i in range(3))
    block = leafnodes_block(None, [RegionRemote("eu", urls)])
    assert block.count("nats-leaf://journal-") == 3 and "listen" not in block
    _accepted(tmp_path, render_config(_server(tmp_path, jetstream_domain="us", extra_blocks=(block,))))


def test_a_locked_link_needs_a_user_on_the_listener_and_tls_on_both_ends(tmp_path: Path) -> None:
    tls = LocalTLS(tmp_path / "tls")
    tls.ensure(["127.0.0.1"])
    auth = LinkAuth("link-us", "s3cret")
    listener = leafnodes_block(LeafListener("127.0.0.1", 7422, auth=auth, tls=tls.server_tls()))
    assert 'user: "link-us"' in listener and f'cert_file: "{tls.cert_file}"' in listener
    _accepted(tmp_path, render_config(_server(tmp_path, jetstream_domain="eu", extra_blocks=(listener,))))
    remote = leafnodes_block(None, [RegionRemote("eu", (leaf_url("127.0.0.1", 7422),), auth, tls.ca_file)])
    assert "nats-leaf://link-us:s3cret@127.0.0.1:7422" in remote and f'ca_file: "{tls.ca_file}"' in remote
    _accepted(tmp_path, render_config(_server(tmp_path, jetstream_domain="us", extra_blocks=(remote,))))


def test_region_names_must_fit_a_jetstream_domain() -> None:
    assert api_prefix("eu-west-1") == "$JS.eu-west-1.API"
    for bad in ("EU", "eu.west", "1eu", "eu west", ""):
        with pytest.raises(LinkConfigError, match="region name"):
            api_prefix(bad)
    with pytest.raises(ValueError, match="JetStream domain"):
        JournalServerConfig("s", "a", "/d", "c", jetstream_domain="a.b")


def test_of_two_regions_the_first_name_listens_and_the_other_dials() -> None:
    assert links_of("eu", ["us", "eu"]) == (True, [])
    assert links_of("us", ["us", "eu"]) == (False, ["eu"])
    with pytest.raises(LinkConfigError, match="loop"):
        links_of("eu", ["eu", "us", "ap"])


def test_the_inbound_stream_sources_the_other_regions_shard_stream_through_its_domain() -> None:
    link = InboundLink("shop", 2, "eu", "shop")
    config = inbound_config(link)
    assert config.name == "ENGRAM_shop_2_FROM_eu" and not config.subjects
    (source,) = config.sources or []
    assert source.name == "ENGRAM_shop_2" and source.external and source.external.api == "$JS.eu.API"
    assert config.num_replicas == 3 and config.deny_delete
    assert config.discard is not None and config.discard.value == "new"


def test_the_source_header_gives_the_origin_stream_sequence_and_identity() -> None:
    # As nats-server 2.15.1 writes it for a stream sourced from another domain.
    header = SourceHeader.parse("ENGRAM_x_0:z0zeNTHp 21 > > engram.x.0 GYcLau5D")
    assert header == SourceHeader("ENGRAM_x_0", 21, "engram.x.0", "GYcLau5D")
    with pytest.raises(InboundError):
        SourceHeader.parse("$JS.ACK.garbage")
