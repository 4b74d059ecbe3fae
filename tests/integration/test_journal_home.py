"""A node's journal connection goes back to its own zone's server once that server is back."""

from __future__ import annotations

import asyncio
import time

import pytest

from engram.journal import home
from engram.journal.client import Journal
from engram.journal.entries import Entry, EntryType

pytestmark = pytest.mark.integration


def _on(journal: Journal) -> str:
    url = journal._nc.connected_url
    return f"{url.hostname}:{url.port}" if url is not None else ""


def _address(url: str) -> str:
    return url.split("://", 1)[-1]


def test_the_connection_returns_to_its_home_server_once_that_server_is_back(nats_journal) -> None:
    home_url = nats_journal.urls[0]

    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "jh", 0, replicas=3)
        await journal.create_stream("c0ffee")
        assert _on(journal) == _address(home_url)
        nats_journal.kill("a")
        deadline = time.monotonic() + 20
        while _on(journal) in ("", _address(home_url)):
            assert time.monotonic() < deadline, "the client never left the killed server"
            await asyncio.sleep(0.05)
        away = _on(journal)
        staying = asyncio.ensure_future(home.stay_home(journal._nc, home_url, every=0.2, checks=2))
        try:
            # Elsewhere while home is down: it stays where it is.
            await asyncio.sleep(1.0)
            assert _on(journal) == away
            nats_journal.start_server("a")
            deadline = time.monotonic() + 30
            while _on(journal) != _address(home_url):
                assert time.monotonic() < deadline, f"still on {_on(journal)}"
                await asyncio.sleep(0.05)
        finally:
            staying.cancel()
        # And the journal works through it.
        entry = Entry(EntryType.DATA, 1, "n1", b"back home")
        deadline = time.monotonic() + 30
        while True:
            try:
                assert (await journal.append(entry, 1, "home-1")).seq == 2
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))
