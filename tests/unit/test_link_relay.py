"""Cutting a local multi-region cluster's links: which links a name cuts, the marker files, the relay
that carries a leaf connection until its link is cut (a real TCP server behind it), and the plan
that routes every dial through a relay."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from engram.cli.main import build_parser
from engram.platforms.local import ports
from engram.platforms.local.link_relay import (
    LinkRelay,
    cut_links,
    cut_marker,
    every_link,
    links_to_cut,
)
from engram.platforms.local.multi_region import links_reached
from engram.platforms.local.regions import RegionsError, plan_links

REGIONS = ("east", "west", "south")


def test_one_region_named_is_cut_off_from_every_other_and_two_lose_the_link_between_them() -> None:
    assert links_to_cut(REGIONS, ["south"]) == [("east", "south"), ("south", "west")]
    assert links_to_cut(REGIONS, ["west", "east"]) == [("east", "west")]


@pytest.mark.parametrize("named, says", [
    (["north"], "no region north in this cluster"),
    (["east", "east"], "named twice"),
    (["east", "west", "south"], "name one region .* or two"),
    ([], "name one region .* or two"),
])
def test_names_that_are_no_link_are_refused_by_what_is_wrong(named: list[str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        links_to_cut(REGIONS, named)


def test_a_links_marker_is_the_same_whichever_region_is_named_first(tmp_path: Path) -> None:
    marker = cut_marker(tmp_path, "west", "east")
    assert marker == cut_marker(tmp_path, "east", "west") == tmp_path / "east+west"
    with pytest.raises(ValueError, match="two regions"):
        cut_marker(tmp_path, "east", "east")
    assert cut_links(tmp_path / "missing") == []
    cut_marker(tmp_path, "west", "south").touch()
    (tmp_path / "stray").touch()  # not a link: ignored
    assert cut_links(tmp_path) == [("south", "west")]
    assert every_link(REGIONS) == [("east", "west"), ("east", "south"), ("south", "west")]


def test_a_servers_dials_reach_a_region_when_a_peer_is_named_after_its_cluster() -> None:
    assert links_reached(["mr-west-journal-a"], "mr-west")
    assert not links_reached(["mr-west2-journal-a"], "mr-west")
    assert not links_reached([], "mr-west")


def test_with_relay_ports_every_dial_goes_through_a_relay_to_the_port_it_stands_for() -> None:
    leaf = {"east": [7001, 7002, 7003], "west": [7101, 7102, 7103], "south": [7201, 7202, 7203]}
    relays = {"east": [9001, 9002, 9003, 9004, 9005, 9006], "west": list(range(9101, 9107)),
              "south": list(range(9201, 9207))}
    links = plan_links("mr", list(REGIONS), ("a", "b", "c"), leaf, "127.0.0.1", "pw", relay_ports=relays,
                       cuts_dir="/tmp/cuts")
    east = links["east"]
    # East dials south, then west (others in order), each zone's port through its own relay.
    assert east.relays == ((("south", 9001, 7201)), ("south", 9002, 7202), ("south", 9003, 7203),
                           ("west", 9004, 7101), ("west", 9005, 7102), ("west", 9006, 7103))
    assert dict(east.dials)["west"] == ("nats-leaf://127.0.0.1:9004", "nats-leaf://127.0.0.1:9005",
                                        "nats-leaf://127.0.0.1:9006")
    assert east.cuts_dir == "/tmp/cuts"
    with pytest.raises(RegionsError, match="needs as many relay ports, got 2"):
        plan_links("mr", list(REGIONS), ("a", "b", "c"), leaf, "127.0.0.1", "pw",
                   relay_ports={**relays, "west": [1, 2]})


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, ports.LOOPBACK, 0)
    return server, server.sockets[0].getsockname()[1]


async def _round_trip(port: int, payload: bytes) -> bytes:
    """What comes back through the relay; b"" when the relay closes or resets the connection."""
    reader, writer = await asyncio.open_connection(ports.LOOPBACK, port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def test_a_relay_carries_bytes_drops_its_connections_when_cut_and_carries_again_once_healed(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        server, target = await _echo_server()
        relay = LinkRelay(ports.allocate(1)[0], target, "east", "west", tmp_path)
        await relay.start()
        try:
            reader, writer = await asyncio.open_connection(ports.LOOPBACK, relay.port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.read(1024), 5) == b"ping"
            # Cut (marker named from the other side's order): the open connection ends...
            cut_marker(tmp_path, "west", "east").touch()
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(1024), 5) == b""
            writer.close()
            # ...and a new one is closed at once.
            assert await _round_trip(relay.port, b"again") == b""
            cut_marker(tmp_path, "east", "west").unlink()
            assert await _round_trip(relay.port, b"healed") == b"healed"
        finally:
            await relay.close()
            server.close()
            await server.wait_closed()

    asyncio.run(run())


def test_a_relay_whose_far_side_is_away_closes_the_connection_for_the_dialler_to_retry(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        relay = LinkRelay(ports.allocate(1)[0], ports.allocate(1)[0], "east", "west", tmp_path)
        await relay.start()
        try:
            assert await _round_trip(relay.port, b"anyone?") == b""
        finally:
            await relay.close()

    asyncio.run(run())


def test_partition_of_a_cluster_that_is_no_multi_region_one_takes_exactly_one_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    for command in (["partition", "c0", "a", "b"], ["heal", "c0"]):
        args = build_parser().parse_args(["local", *command, "--dir", str(tmp_path)])
        assert args.func(args) == 1
        assert "c0 is not a multi-region cluster: name one zone to" in capsys.readouterr().err
