"""Port allocation keeps clear of the kernel's ephemeral range, where outgoing connections take
their source ports."""

from __future__ import annotations

import socket

import pytest

from engram.platforms.local import ports


def test_allocated_ports_are_free_distinct_and_below_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ports.RANGE_VARIABLE, raising=False)
    low, _ = ports.ephemeral_range()
    chosen = ports.allocate(50)
    assert len(set(chosen)) == 50
    assert all(ports.is_free(p) for p in chosen)
    if low - 10000 >= 1000:
        assert all(10000 <= p < low for p in chosen)


def test_a_port_is_never_handed_out_twice_by_one_process() -> None:
    first = set(ports.allocate(200))
    second = set(ports.allocate(200))
    assert not first & second


def test_a_listening_port_is_never_chosen() -> None:
    taken = ports.allocate(1)[0]
    with socket.socket() as sock:
        sock.bind((ports.LOOPBACK, taken))
        sock.listen()
        assert not ports.is_free(taken)
        ports._handed_out.discard(taken)
        assert taken not in ports.allocate(2000)


def test_a_base_that_is_taken_is_refused_naming_the_port() -> None:
    with socket.socket() as sock:
        sock.bind((ports.LOOPBACK, 0))
        sock.listen()
        busy = sock.getsockname()[1]
        with pytest.raises(ports.PortBusy, match=str(busy)):
            ports.allocate(1, base=busy)


def test_a_configured_range_is_where_every_port_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ports.RANGE_VARIABLE, "21000-21099")
    chosen = ports.allocate(20)
    assert all(21000 <= p <= 21099 for p in chosen)


@pytest.mark.parametrize("text", ["21000", "x-y", "0-10", "300-200", "1-70000"])
def test_a_malformed_range_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(ports.RANGE_VARIABLE, text)
    with pytest.raises(ports.PortBusy, match=ports.RANGE_VARIABLE):
        ports.allocate(1)
