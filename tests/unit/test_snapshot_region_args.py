"""A node passes its region and links to its snapshot child, which reads them back or refuses them."""

from __future__ import annotations

import argparse

import pytest

from engram.multiregion.link import LinkConfigError
from engram.snapshots.regions import add_region_args, linked_from_args, region_args


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_region_args(parser)
    return parser.parse_args(argv)


def test_links_go_to_the_child_and_come_back_the_same() -> None:
    linked = {"west": "demo-west", "ap": "demo-ap"}
    args = _parse(region_args("east", linked))
    assert args.region == "east" and linked_from_args(args) == linked


def test_a_single_region_cluster_passes_nothing() -> None:
    assert region_args("", {}) == []
    assert linked_from_args(_parse([])) == {}


@pytest.mark.parametrize(("argv", "error", "says"), [
    (["--region", "east", "--linked-region", "west"], ValueError, "REGION=CLUSTER"),
    (["--linked-region", "west=w"], ValueError, "needs --region"),
    (["--region", "east", "--linked-region", "We st=w"], LinkConfigError, "region name"),
])
def test_malformed_links_are_refused_naming_them(argv: list[str], error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        linked_from_args(_parse(argv))
