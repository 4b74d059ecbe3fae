"""How a local multi-region cluster is laid out (docs/multi-region.md, "A local multi-region
cluster"): one full local cluster per region, named NAME-<region>, each journal its own JetStream
domain, linked by leaf nodes; a record under DIR/NAME lists them.

Pure decisions only; multi_region.py starts, asks and stops the clusters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engram.journal.servers import ServerTLS

# Re-exported: the lag figures moved to the platform-neutral engram.multiregion.lag.
from engram.multiregion.lag import InboundView as InboundView
from engram.multiregion.lag import lag_lines as lag_lines
from engram.multiregion.lag import lag_row as lag_row
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
from engram.platforms.local.state import check_name, cluster_dir

# DIR/NAME/regions.json: which region clusters make up the multi-region cluster NAME.
RECORD_FILE = "regions.json"


class RegionsError(ValueError):
    """A multi-region cluster that cannot be laid out as asked; the message names the fix."""


def region_cluster(name: str, region: str) -> str:
    """The local cluster that is ``region`` of the multi-region cluster ``name``."""
    return f"{name}-{region}"


def check_regions(name: str, regions: Sequence[str]) -> tuple[str, ...]:
    """The regions, if they can form a multi-region cluster named ``name``; RegionsError if not."""
    if len(set(regions)) != len(regions):
        raise RegionsError(f"--regions names a region twice: {','.join(regions)}")
    if len(regions) < 2:
        raise RegionsError(f"--regions needs two regions to link, got {','.join(regions) or 'none'}; "
                           "for one region, leave --regions out")
    try:
        for region in regions:
            check_region(region)
            check_name(region_cluster(name, region))
        links_of(regions[0], regions)  # refuses more regions than can be linked
    except LinkConfigError as exc:
        raise RegionsError(f"--regions: {exc}") from None
    except ValueError as exc:  # the region's cluster name
        raise RegionsError(f"--regions: a region's cluster is named NAME-<region>, and {exc}") from None
    return tuple(regions)


# The user prefix of the link's credentials (link.leaf_user); the password is made per `up`.
LINK_USER = "link"


@dataclass(frozen=True)
class RegionLink:
    """What one region's cluster needs to be part of the multi-region cluster: its region, the other
    regions' clusters, the leafnode port each zone's journal server listens on, the leafnode URLs
    of every other region, and the link's password."""

    region: str
    linked: tuple[tuple[str, str], ...]
    listen: tuple[tuple[str, int], ...] = ()
    dials: tuple[tuple[str, tuple[str, ...]], ...] = ()
    password: str = ""
    # With --tls: the CA each other region's leafnode certificate is verified against.
    ca_files: tuple[tuple[str, str], ...] = ()
    # The relays its supervisor holds, one per port it dials: (other region, relay port, that
    # region's leafnode port); the dials go to the relay ports (link_relay.py).
    relays: tuple[tuple[str, int, int], ...] = ()
    # Where the markers of cut links are (link_relay.cut_marker).
    cuts_dir: str = ""


def plan_links(name: str, regions: Sequence[str], zones: Sequence[str],
               leaf_ports: Mapping[str, Sequence[int]], host: str, password: str,
               ca_files: Mapping[str, str] | None = None,
               relay_ports: Mapping[str, Sequence[int]] | None = None,
               cuts_dir: str = "") -> dict[str, RegionLink]:
    """Each region's link: every region listens on one leafnode port per zone (``leaf_ports[region]``,
    in zone order), and every server dials every other region's ports. ``ca_files``: each region's
    CA, for a link under TLS. ``relay_ports``: per region, the ports its dials go through, one per
    port dialled (other regions in order, zones in order), which can then be cut (link_relay.py)."""
    for region in regions:
        if len(leaf_ports.get(region, ())) != len(zones):
            raise RegionsError(f"region {region} listens for the link: it needs {len(zones)} leafnode "
                               f"ports, got {len(leaf_ports.get(region, ()))}")
    links = {}
    for region in regions:
        _, dials = links_of(region, regions)
        dialled = [(r, p) for r in dials for p in leaf_ports[r]]
        relays: tuple[tuple[str, int, int], ...] = ()
        if relay_ports is not None:
            if len(relay_ports.get(region, ())) != len(dialled):
                raise RegionsError(f"region {region} dials {len(dialled)} leafnode ports and needs as many "
                                   f"relay ports, got {len(relay_ports.get(region, ()))}")
            relays = tuple((r, port, target) for (r, target), port in
                           zip(dialled, relay_ports[region], strict=True))
        through = {target: port for _, port, target in relays}
        links[region] = RegionLink(
            region=region,
            linked=tuple((r, region_cluster(name, r)) for r in regions if r != region),
            listen=tuple(zip(zones, leaf_ports[region], strict=True)),
            dials=tuple((r, tuple(leaf_url(host, through.get(p, p)) for p in leaf_ports[r])) for r in dials),
            password=password,
            ca_files=tuple((r, ca_files[r]) for r in dials) if ca_files else (),
            relays=relays,
            cuts_dir=cuts_dir,
        )
    return links


def link_blocks(region: str, host: str, listen_port: int, dials: Mapping[str, Sequence[str]],
                password: str, tls: ServerTLS | None = None, ca_files: Mapping[str, str] | None = None,
                engine_user: tuple[str, str] | None = None) -> tuple[str, ...]:
    """One journal server's accounts and leafnodes blocks (link.region_blocks): its listener, and
    a remote to every other region (``dials``: region -> leafnode URLs). Under TLS (``tls``: this
    server's certificate; ``ca_files``: each other region's CA) the journal takes passwords, and
    ``engine_user`` is the engine's."""
    cas = ca_files or {}
    config = RegionLinkConfig(
        region=region, listener=LeafListener(host, listen_port, tls=tls),
        peers=tuple(RegionRemote(r, tuple(urls), cas.get(r, "")) for r, urls in sorted(dials.items())),
        auth=LinkAuth(LINK_USER, password),
    )
    return region_blocks(config, engine_user)


def port_bases(base: int | None, regions: int, per_cluster: int, zones: int) -> list[int | None]:
    """Each region's --port BASE: with a BASE, region k takes the block of per_cluster ports (its
    cluster's, docs/local-platform.md) plus one leafnode port per zone, after region k-1's; without
    one, every port is a free one."""
    if base is None:
        return [None] * regions
    return [base + k * (per_cluster + zones) for k in range(regions)]


def relay_port_bases(base: int | None, regions: int, per_cluster: int, zones: int) -> list[int | None]:
    """Where each region's link relays take their ports (one per port it dials, zones x (regions-1)):
    with a BASE, blocks after every region's own (port_bases), region k's after region k-1's;
    without one, free ports."""
    if base is None:
        return [None] * regions
    first, count = base + regions * (per_cluster + zones), zones * (regions - 1)
    return [first + k * count for k in range(regions)]


@dataclass(frozen=True)
class RegionsRecord:
    """DIR/NAME/regions.json: the multi-region cluster NAME, its regions in order, their clusters."""

    name: str
    regions: tuple[str, ...]

    @property
    def clusters(self) -> dict[str, str]:
        return {r: region_cluster(self.name, r) for r in self.regions}

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "regions": self.clusters}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RegionsRecord:
        data = json.loads(text)
        return cls(str(data["name"]), tuple(data["regions"]))


def record_path(base: str | Path, name: str) -> Path:
    return cluster_dir(base, name) / RECORD_FILE


def load_record(base: str | Path, name: str) -> RegionsRecord | None:
    """The record of the multi-region cluster ``name``, or None if ``name`` is not one."""
    try:
        return RegionsRecord.from_json(record_path(base, name).read_text())
    except FileNotFoundError:
        return None
