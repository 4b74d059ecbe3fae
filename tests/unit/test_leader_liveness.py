"""A replica campaigns early only when its primary's process is found gone, and never on a guess."""

from __future__ import annotations

import asyncio
import socket

from engram.journal.entries import Entry, EntryType
from engram.leadership.liveness import process_gone
from engram.leadership.view import LeaderView


def _view_led_by_n1(now: float) -> LeaderView:
    view = LeaderView(lease_seconds=2.0)
    view.observe(Entry(EntryType.LEADER, 4, "n1", address="h:1"), now=now)
    return view


def test_a_gone_leader_makes_a_campaign_due_before_the_backoff() -> None:
    view = _view_led_by_n1(100.0)
    assert not view.renewal_late(100.5)  # renewals come every half second
    assert view.renewal_late(100.8)
    assert not view.campaign_due(100.8)
    view.leader_gone(4)
    assert view.campaign_due(100.8)


def test_a_probe_about_an_older_epoch_changes_nothing() -> None:
    view = _view_led_by_n1(100.0)
    view.observe(Entry(EntryType.LEADER, 5, "n2", address="h:2"), now=100.5)
    view.leader_gone(4)  # the probe of n1 answered after n2 had taken over
    assert not view.campaign_due(101.0)


def test_a_renewal_after_the_probe_wins_over_it() -> None:
    view = _view_led_by_n1(100.0)
    view.leader_gone(4)
    view.observe(Entry(EntryType.LEASE, 4, "n1"), now=100.9)
    assert not view.campaign_due(101.0)


def test_a_lost_campaign_needs_a_fresh_probe_and_a_fresh_backoff() -> None:
    view = _view_led_by_n1(100.0)
    view.leader_gone(4)
    view.restart_clock(101.0)
    assert not view.campaign_due(101.0)
    assert not view.renewal_late(101.5)
    assert view.campaign_due(101.0 + 3.01)


def test_only_a_refused_connection_counts_as_gone() -> None:
    async def probe() -> tuple[bool, bool]:
        # A listener that never accepts stands for a paused process: the kernel still completes
        # the connection from its backlog, so the process must not be taken for dead.
        paused = socket.socket()
        paused.bind(("127.0.0.1", 0))
        paused.listen(4)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        try:
            alive = await process_gone(f"127.0.0.1:{paused.getsockname()[1]}", 2.0)
            gone = await process_gone(f"127.0.0.1:{closed.getsockname()[1]}", 2.0)
        finally:
            paused.close()
            closed.close()
        return alive, gone

    alive, gone = asyncio.run(probe())
    assert alive is False
    assert gone is True


def test_an_address_that_does_not_resolve_proves_nothing() -> None:
    assert asyncio.run(process_gone("no-such-host.invalid:6379", 2.0)) is False
