"""The links between a local multi-region cluster's regions, and cutting them while every region goes
on taking writes, as a lost WAN link between two data centres does (docs/multi-region.md, "Cutting
a link").

A region's journal servers dial every other region's leafnode ports through relays that its own
supervisor holds (LinkRelay). A link is cut while a marker file for its two regions exists under the
multi-region cluster's directory: its relays then drop their connections and refuse new ones.
Deciding which links are cut is pure (cut_marker, cut_links, links_to_cut); the relays and
`engram local partition/heal` act on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from engram.platforms.local.ports import LOOPBACK
from engram.platforms.local.relay import CONNECT_TIMEOUT, pump
from engram.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# How often a relay looks for its link's marker: a cut takes effect within this.
CUT_POLL = 0.2
CUTS_DIR = "cuts"
_SEPARATOR = "+"


def cut_marker(cuts_dir: str | Path, a: str, b: str) -> Path:
    """The file whose presence cuts the link between regions a and b (either order)."""
    if a == b:
        raise ValueError(f"a link joins two regions, not {a!r} with itself")
    first, second = sorted((a, b))
    return Path(cuts_dir) / f"{first}{_SEPARATOR}{second}"


def cut_links(cuts_dir: str | Path) -> list[tuple[str, str]]:
    """The links cut now, each as its two regions in order."""
    try:
        names = sorted(p.name for p in Path(cuts_dir).iterdir())
    except FileNotFoundError:
        return []
    pairs = []
    for name in names:
        a, sep, b = name.partition(_SEPARATOR)
        if sep and a and b:
            pairs.append((a, b))
    return pairs


def clear_cuts(cuts_dir: str | Path) -> None:
    """Heal every link: remove every cut marker."""
    for a, b in cut_links(cuts_dir):
        cut_marker(cuts_dir, a, b).unlink(missing_ok=True)


def links_to_cut(regions: Sequence[str], named: Sequence[str]) -> list[tuple[str, str]]:
    """The links `engram local partition` cuts: between two named regions, that link; one named
    region, every link of it (isolated from all others). ValueError naming what is wrong."""
    unknown = [r for r in named if r not in regions]
    if unknown:
        raise ValueError(f"no region {', '.join(unknown)} in this cluster (its regions: "
                         f"{', '.join(regions)})")
    if len(set(named)) != len(named):
        raise ValueError(f"a region is named twice: {', '.join(named)}")
    if len(named) == 1:
        return [tuple(sorted((named[0], r))) for r in regions if r != named[0]]  # type: ignore[misc]
    if len(named) == 2:
        return [tuple(sorted(named))]  # type: ignore[list-item]
    raise ValueError("name one region (cut it off from every other) or two (cut the link between them), "
                     f"not {len(named)}")


def every_link(regions: Iterable[str]) -> list[tuple[str, str]]:
    return [tuple(sorted(pair)) for pair in itertools.combinations(regions, 2)]  # type: ignore[misc]


class LinkRelay:
    """Relays one leafnode dial from this region to a port of another region, unless the link is cut."""

    def __init__(self, port: int, target: int, region: str, other: str, cuts_dir: str | Path,
                 host: str = LOOPBACK) -> None:
        self.port, self.target, self.host = port, target, host
        self.region, self.other = region, other
        self.marker = cut_marker(cuts_dir, region, other)
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        # Both ends' writers of each open connection, aborted when the link is cut.
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def cut(self) -> bool:
        return self.marker.exists()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self._watch = asyncio.ensure_future(self._drop_when_cut())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(self._watch)
        self._drop()
        if self._conns:
            await asyncio.wait(set(self._conns), timeout=CUT_POLL * 5)
        await cancel_and_wait(*self._conns)
        if self._server is not None:
            await self._server.wait_closed()

    def _drop(self) -> None:
        # Aborting the sockets ends the pumps as a lost network would; cancelling the connection
        # tasks instead would make asyncio log each as an error.
        for writer in list(self._writers):
            writer.transport.abort()

    async def _drop_when_cut(self) -> None:
        was_cut = False
        while True:
            cut = self.cut
            if cut != was_cut:
                log.warning("link %s-%s %s (relay %d -> %d)", self.region, self.other,
                            "cut: dropping its connections" if cut else "healed", self.port, self.target)
                was_cut = cut
            if cut:
                self._drop()
            await asyncio.sleep(CUT_POLL)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(client_w)
        try:
            if not self.cut:
                await self._relay(client_r, client_w)
        finally:
            self._conns.discard(task)
            self._writers.discard(client_w)
            client_w.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            far_r, far_w = await asyncio.wait_for(asyncio.open_connection(self.host, self.target),
                                                  CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            return  # the other region is away; its leaf node dials again
        self._writers.add(far_w)
        try:
            await asyncio.gather(pump(client_r, far_w), pump(far_r, client_w))
        finally:
            self._writers.discard(far_w)
            far_w.close()
            with contextlib.suppress(Exception):
                await far_w.wait_closed()
