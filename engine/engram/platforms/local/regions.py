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
from typing import Any

from engram.multiregion.link import (
    LeafListener,
    LinkConfigError,
    RegionRemote,
    check_region,
    leaf_url,
    leafnodes_block,
    links_of,
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
        links_of(regions[0], regions)  # refuses what cannot be linked yet (more than two regions)
    except LinkConfigError as exc:
        raise RegionsError(f"--regions: {exc}") from None
    except ValueError as exc:  # the region's cluster name
        raise RegionsError(f"--regions: a region's cluster is named NAME-<region>, and {exc}") from None
    return tuple(regions)


@dataclass(frozen=True)
class RegionLink:
    """What one region's cluster needs to be part of the multi-region cluster: its region, the other
    regions' clusters, the leafnode ports it listens on (zone -> port; none if it dials) and the
    leafnode URLs of the regions it dials."""

    region: str
    linked: tuple[tuple[str, str], ...]
    listen: tuple[tuple[str, int], ...] = ()
    dials: tuple[tuple[str, tuple[str, ...]], ...] = ()


def plan_links(name: str, regions: Sequence[str], zones: Sequence[str],
               leaf_ports: Mapping[str, Sequence[int]], host: str) -> dict[str, RegionLink]:
    """Each region's link: of a pair, the region links_of says listens takes one leafnode port per
    zone (``leaf_ports[region]``, in zone order); every server of the other dials all of them."""
    listening = {r: links_of(r, regions)[0] for r in regions}
    for region, listens in listening.items():
        if listens and len(leaf_ports.get(region, ())) != len(zones):
            raise RegionsError(f"region {region} listens for the link: it needs {len(zones)} leafnode "
                               f"ports, got {len(leaf_ports.get(region, ()))}")
    links = {}
    for region in regions:
        _, dials = links_of(region, regions)
        links[region] = RegionLink(
            region=region,
            linked=tuple((r, region_cluster(name, r)) for r in regions if r != region),
            listen=tuple(zip(zones, leaf_ports[region], strict=True)) if listening[region] else (),
            dials=tuple((r, tuple(leaf_url(host, p) for p in leaf_ports[r])) for r in dials),
        )
    return links


def leafnodes(host: str, listen_port: int | None, dials: Mapping[str, Sequence[str]]) -> str:
    """One journal server's leafnodes block: its listener (if its region listens) and its remotes."""
    listener = LeafListener(host, listen_port) if listen_port else None
    remotes = [RegionRemote(r, tuple(urls)) for r, urls in sorted(dials.items())]
    return leafnodes_block(listener, remotes)


def port_bases(base: int | None, regions: int, per_cluster: int, zones: int) -> list[int | None]:
    """Each region's --port BASE: with a BASE, region k takes the block of per_cluster ports (its
    cluster's, docs/local-platform.md) plus one leafnode port per zone, after region k-1's; without
    one, every port is a free one."""
    if base is None:
        return [None] * regions
    return [base + k * (per_cluster + zones) for k in range(regions)]


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


# ---- lag -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundView:
    """What one region's journal says about one inbound stream (shard, source region), and what the
    source region's journal says of the origin stream; None where it could not be read."""

    shard: int
    source: str
    origin_last: int | None = None
    # Origin sequence of the inbound stream's last entry (0: it holds none yet).
    copied_through: int | None = None
    # NATS's own view of the source: origin entries not copied as of its last contact, and seconds
    # since that contact.
    source_lag: int | None = None
    idle: float | None = None
    inbound_last: int | None = None
    # The applier's recorded position: the next inbound sequence it applies (1: none applied yet).
    applied_next: int | None = None
    error: str = ""


def lag_row(view: InboundView) -> dict[str, Any]:
    """A region's lag behind one source for one shard: origin entries not copied yet, and copied
    entries not applied yet (None where unknown), with why when something is unknown."""
    if view.origin_last is not None and view.copied_through is not None:
        # Both journals answered: exact, where NATS's lag is only as fresh as its last contact.
        not_copied: int | None = max(0, view.origin_last - view.copied_through)
    else:
        not_copied = view.source_lag
    not_applied = None
    if view.inbound_last is not None:
        not_applied = max(0, view.inbound_last - (view.applied_next or 1) + 1)
    return {
        "shard": view.shard,
        "from": view.source,
        "not_copied": not_copied,
        "not_applied": not_applied,
        "idle": None if view.idle is None or view.idle == float("inf") else round(view.idle, 1),
        "error": view.error,
    }


def lag_lines(region: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The lag table of one region, for `engram local status` without --json."""
    if not rows:
        return []
    lines = [f"region {region}: lag behind the other regions",
             f"  {'shard':<6}{'from':<12}{'not copied':>11}{'not applied':>13}{'idle':>8}  error"]
    for row in rows:
        def show(value: Any) -> str:
            return "?" if value is None else str(value)
        idle = "?" if row["idle"] is None else f"{row['idle']:g}s"
        lines.append(f"  {row['shard']:<6}{row['from']:<12}{show(row['not_copied']):>11}"
                     f"{show(row['not_applied']):>13}{idle:>8}  {row['error']}".rstrip())
    return lines
