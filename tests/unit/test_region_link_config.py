"""A region's journal config for a multi-region cluster: its JetStream domain and leafnodes block,
and the inbound stream that sources another region's shard stream (engram.multiregion)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engram import binaries
from engram.journal.servers import JournalServerConfig, render_config
from engram.multiregion.inbound import (
    RESTART_SOURCE_EVERY,
    STALLED_AFTER,
    InboundError,
    InboundLink,
    SourceHeader,
    inbound_config,
    source_stalled,
)
from engram.multiregion.link import (
    INBOUND_ACCOUNT,
    MAX_REGIONS,
    LeafListener,
    LinkAuth,
    LinkConfigError,
    RegionLinkConfig,
    RegionRemote,
    api_prefix,
    leaf_url,
    links_of,
    outbound_account,
    region_blocks,
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


AUTH = LinkAuth("link", "s3cret")


def _link(region: str = "eu", peers: tuple[str, ...] = ("us",), **listener: object) -> RegionLinkConfig:
    remotes = tuple(RegionRemote(p, tuple(leaf_url(f"journal-{i}.{p}.example", 7422)
                                                       for i in range(3))) for p in peers)
    return RegionLinkConfig(region, LeafListener("127.0.0.1", 7422, **listener),  # type: ignore[arg-type]
                            remotes, AUTH)


def test_a_region_journal_has_its_own_jetstream_domain_a_leafnode_port_and_a_remote_per_region(
        tmp_path: Path) -> None:
    blocks = region_blocks(_link("eu", ("us", "ap")))
    text = render_config(_server(tmp_path, jetstream_domain="eu", extra_blocks=blocks,
                                 users_in_accounts=True))
    assert '  domain: "eu"' in text
    assert 'listen: "127.0.0.1:7422"' in text
    # Remotes dial the addresses they were given, never ones the servers advertise.
    assert "no_advertise: true" in text
    # Every server of every other region is listed; each link logs in as this region's user and
    # is bound to the inbound account.
    assert text.count("nats-leaf://link-eu:s3cret@journal-") == 6
    assert text.count(f'      account: "{INBOUND_ACCOUNT}"') == 2
    # The other regions' links are bound to an account each.
    assert f'user: "link-us", password: "s3cret", account: "{outbound_account("us")}"' in text
    assert f'user: "link-ap", password: "s3cret", account: "{outbound_account("ap")}"' in text
    # What the US region sources from here is delivered on subjects only its link carries.
    assert 'subject: "engram.to.us.>"' in text
    # Without a journal password, clients that give none are the engine.
    assert 'no_auth_user: "engram"' in text and "authorization {\n  users" not in text
    _accepted(tmp_path, text)


def test_with_a_journal_password_the_engines_user_lives_in_its_account(tmp_path: Path) -> None:
    blocks = region_blocks(_link(), engine_user=("engine", "pw"))
    text = render_config(_server(tmp_path, jetstream_domain="eu", extra_blocks=blocks,
                                 users_in_accounts=True))
    assert 'users: [{user: "engine", password: "pw"}]' in text and "no_auth_user" not in text
    _accepted(tmp_path, text)


def test_a_locked_link_serves_tls_on_the_leafnode_port_and_verifies_the_other_regions(tmp_path: Path) -> None:
    tls = LocalTLS(tmp_path / "tls")
    tls.ensure(["127.0.0.1"])
    remote = RegionRemote("us", (leaf_url("127.0.0.1", 7423, "tls"),), tls.ca_file)
    listener = LeafListener("127.0.0.1", 7422, tls=tls.server_tls())
    link = RegionLinkConfig("eu", listener, (remote,), AUTH)
    text = render_config(_server(tmp_path, jetstream_domain="eu", extra_blocks=region_blocks(link),
                                 users_in_accounts=True))
    assert f'cert_file: "{tls.cert_file}"' in text and f'ca_file: "{tls.ca_file}"' in text
    assert "tls://link-eu:s3cret@127.0.0.1:7423" in text
    _accepted(tmp_path, text)


@pytest.mark.parametrize("peers, says", [
    ((), "no other region"),
    (("us", "us"), "same region"),
    (("eu",), "itself"),
    (("us", "ap", "sa", "af", "me"), f"at most {MAX_REGIONS}"),
])
def test_links_that_cannot_be_configured_are_refused(peers: tuple[str, ...], says: str) -> None:
    with pytest.raises(LinkConfigError, match=says):
        _link("eu", peers)


def test_region_names_must_fit_a_jetstream_domain() -> None:
    assert api_prefix("eu-west-1") == "$JS.eu-west-1.API"
    for bad in ("EU", "eu.west", "1eu", "eu west", ""):
        with pytest.raises(LinkConfigError, match="region name"):
            api_prefix(bad)
    with pytest.raises(ValueError, match="JetStream domain"):
        JournalServerConfig("s", "a", "/d", "c", jetstream_domain="a.b")


def test_every_region_listens_and_dials_every_other_up_to_five_regions() -> None:
    assert links_of("eu", ["us", "eu"]) == (True, ["us"])
    assert links_of("us", ["us", "eu", "ap"]) == (True, ["ap", "eu"])
    with pytest.raises(LinkConfigError, match=f"at most {MAX_REGIONS}"):
        links_of("eu", ["eu", "us", "ap", "sa", "af", "me"])


def test_the_inbound_stream_sources_the_other_regions_shard_stream_through_its_domain() -> None:
    link = InboundLink("shop", 2, "eu", "shop", "us")
    config = inbound_config(link)
    assert config.name == "ENGRAM_shop_2_FROM_eu" and not config.subjects
    (source,) = config.sources or []
    assert source.name == "ENGRAM_shop_2" and source.external and source.external.api == "$JS.eu.API"
    # Delivered where only the link to this region's cluster carries it (link.region_blocks).
    assert source.external.deliver == "engram.to.us"
    assert config.num_replicas == 3 and config.deny_delete
    assert config.discard is not None and config.discard.value == "new"


def test_the_source_header_gives_the_origin_stream_sequence_and_identity() -> None:
    # As nats-server 2.15.1 writes it for a stream sourced from another domain.
    header = SourceHeader.parse("ENGRAM_x_0:z0zeNTHp 21 > > engram.x.0 GYcLau5D")
    assert header == SourceHeader("ENGRAM_x_0", 21, "engram.x.0", "GYcLau5D")
    with pytest.raises(InboundError):
        SourceHeader.parse("$JS.ACK.garbage")


@pytest.mark.parametrize("idle, answers, since, restart", [
    (STALLED_AFTER + 1, True, RESTART_SOURCE_EVERY, True),
    (STALLED_AFTER - 1, True, RESTART_SOURCE_EVERY, False),  # heard from lately: nothing stuck
    (STALLED_AFTER + 1, False, RESTART_SOURCE_EVERY, False),  # the region is away: NATS waits for it
    (STALLED_AFTER + 1, True, RESTART_SOURCE_EVERY - 1, False),  # restarted a moment ago
    (float("inf"), True, float("inf"), True),
])
def test_a_source_is_restarted_only_when_silent_while_its_region_answers(
        idle: float, answers: bool, since: float, restart: bool) -> None:
    assert source_stalled(idle, answers, since) is restart
