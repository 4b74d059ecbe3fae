"""The snapshot child's view of a multi-region cluster: which regions' copies hold truncation back
(docs/multi-region.md, "On truncation")."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from engram.journal.client import Journal
from engram.multiregion.holdback import Copied, copied_through
from engram.multiregion.inbound import InboundLink
from engram.multiregion.link import check_region, domain


def region_args(region: str, linked_regions: Mapping[str, str]) -> list[str]:
    """Command-line arguments that pass a node's region and links to the snapshot child."""
    if not linked_regions:
        return []
    args = ["--region", region]
    for other, cluster in sorted(linked_regions.items()):
        args += ["--linked-region", f"{other}={cluster}"]
    return args


def add_region_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", default="", help="this cluster's region (multi-region clusters)")
    parser.add_argument("--linked-region", action="append", default=[], metavar="REGION=CLUSTER",
                        help="another region of the cluster, whose copy holds truncation back")


def linked_from_args(args: argparse.Namespace) -> dict[str, str]:
    """REGION=CLUSTER pairs as a mapping; ValueError naming a malformed one."""
    linked = {}
    for pair in args.linked_region:
        region, sep, cluster = pair.partition("=")
        if not sep or not cluster:
            raise ValueError(f"--linked-region {pair!r} is not REGION=CLUSTER")
        linked[check_region(region)] = cluster
    if linked and not args.region:
        raise ValueError("--linked-region needs --region")
    return linked


async def copies_of_linked_regions(journal: Journal, region: str, cluster: str,
                                   linked_regions: dict[str, str], timeout: float = 2.0) -> list[Copied]:
    """How much of this shard's journal (of `cluster` in `region`) each linked region has copied,
    asked of that region's own journal over the link: the truncation hold-back's input."""
    out = []
    for other, other_cluster in sorted(linked_regions.items()):
        their_copy = InboundLink(other_cluster, journal.shard, region, cluster, other)
        out.append(await copied_through(journal.jetstream_in(domain(other)), their_copy, other, timeout))
    return out
