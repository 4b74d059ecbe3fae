"""The link between the regions of a multi-region cluster, as the operator renders it: the one place
the operator calls engram.multiregion.link (docs/multi-region.md, "On Kubernetes").

Which links a region holds is link.py's decision (``region_links``: every region listens and
dials every other); the accounts and leafnodes blocks of a region's journal servers are link.py's
rendering (``link_blocks``). Both are kept here, and only here, so that a change to how regions are
linked is made in one module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engram.journal.servers import JournalAuth, ServerTLS
from engram.multiregion.link import (
    LeafListener,
    LinkAuth,
    LinkConfigError,
    RegionLinkConfig,
    RegionRemote,
    check_region,
    leaf_url,
    links_of,
    region_blocks,
)
from engram_operator import constants

if TYPE_CHECKING:
    from engram_operator.spec import RegionSection

# Keys of the link's credentials Secret (the MultiRegionCluster's spec.link.secretName, and its copy
# in each region's namespace).
USER_KEY = "user"
PASSWORD_KEY = "password"

# A link without spec.link.secretName still logs in (a login is what binds each connection to its
# account), with this well-known password: anyone who reaches a leafnode port can join the link,
# as with no password at all. docs/multi-region.md says to set a Secret.
OPEN_LINK = LinkAuth("link", "engram-open-link")

# Where a journal server mounts the link's certificate (spec.link.tls): it serves the leafnode port
# with it, and verifies the other region's leafnode certificate against the CA beside it.
LINK_TLS = ServerTLS(
    cert_file=f"{constants.LINK_TLS_DIR}/{constants.TLS_CERT}",
    key_file=f"{constants.LINK_TLS_DIR}/{constants.TLS_KEY}",
    ca_file=f"{constants.LINK_TLS_DIR}/{constants.TLS_CA}",
)


class RegionLinkError(ValueError):
    """Regions that cannot be linked (link.py's refusal); the message says why."""


@dataclass(frozen=True)
class RegionLinks:
    """One region's side of the links: whether its journal listens for other regions, and which
    regions it dials."""

    listens: bool
    dials: tuple[str, ...]


def region_name_problem(name: str) -> str:
    """Why ``name`` cannot name a region (it becomes a JetStream domain); "" when it can."""
    try:
        check_region(name)
    except LinkConfigError as err:
        return str(err)
    return ""


def region_links(region: str, regions: Sequence[str]) -> RegionLinks:
    """Which links ``region`` holds among ``regions`` (link.links_of); RegionLinkError when the
    regions cannot be linked (more than link.MAX_REGIONS)."""
    try:
        listens, dials = links_of(region, list(regions))
    except LinkConfigError as err:
        raise RegionLinkError(str(err)) from None
    return RegionLinks(listens, tuple(dials))


def link_auth_of(data: Mapping[str, bytes]) -> LinkAuth | None:
    """The link's user and password from a Secret's decoded data; None when missing or unusable."""
    try:
        return LinkAuth(data[USER_KEY].decode(), data[PASSWORD_KEY].decode())
    except (KeyError, UnicodeDecodeError, LinkConfigError):
        return None


def leafnode_urls(hosts: Sequence[str], port: int = constants.LEAFNODE_PORT) -> tuple[str, ...]:
    """The leafnode URLs of a listening region's journal servers, one per server address."""
    return tuple(leaf_url(host, port) for host in hosts)


def link_blocks(section: RegionSection, auth: LinkAuth | None, tls: bool,
                engine: JournalAuth | None = None) -> tuple[str, ...]:
    """The accounts and leafnodes blocks every journal server of the region ``section`` describes
    carries: its leafnode port, and a remote to every other region (every server of that region
    listed, so a remote moves on to another when one is away).

    ``auth``: the link's credentials (OPEN_LINK when None). ``tls``: the link's certificate is
    mounted at LINK_TLS: the listener serves it, and a remote verifies the other region's
    certificate against its CA. ``engine``: the journal's own credentials when it takes passwords;
    they then live in the engine's account these blocks define.
    """
    links = region_links(section.name, section.region_names)
    listener = LeafListener("0.0.0.0", constants.LEAFNODE_PORT, tls=LINK_TLS if tls else None)
    remotes = []
    for region in links.dials:
        member = section.member(region)
        urls = member.leafnode_urls if member is not None else ()
        remotes.append(RegionRemote(region, tuple(urls), LINK_TLS.ca_file if tls else ""))
    config = RegionLinkConfig(section.name, listener, tuple(remotes), auth or OPEN_LINK)
    return region_blocks(config, (engine.user, engine.password) if engine is not None else None)
