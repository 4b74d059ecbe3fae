"""TCP port allocation on the loopback interface."""

from __future__ import annotations

import contextlib
import os
import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


class PortBusy(RuntimeError):
    """A requested port is already in use."""


def _bind(port: int, host: str = LOOPBACK) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR as servers set it: a port in TIME_WAIT is usable, a listening one is not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on host:port."""
    try:
        _bind(port, host).close()
    except OSError:
        return False
    return True


# Where Valkey and Redis clients look first: the endpoint takes it when nothing else holds it.
DEFAULT_ENDPOINT_PORT = 6379


def allocate(count: int, base: int | None = None, host: str = LOOPBACK) -> list[int]:
    """Return count ports: base, base+1, ... (each checked free), or else free ports outside the
    kernel's ephemeral range."""
    if count <= 0:
        return []
    if base is not None:
        if not 1 <= base or base + count - 1 > 65535:
            raise PortBusy(f"ports {base}..{base + count - 1} are outside 1..65535; choose another --port")
        busy = [p for p in range(base, base + count) if not is_free(p, host)]
        if busy:
            shown = ", ".join(str(p) for p in busy[:5])
            raise PortBusy(
                f"port {shown} on {host} is already in use (this cluster needs {base}..{base + count - 1}); "
                "choose another --port or omit it to pick free ports"
            )
        return list(range(base, base + count))
    return _outside_ephemeral(count, host)


# Ports handed out by this process, never handed out again: a port chosen but not yet bound by
# the server it is for still looks free.
_handed_out: set[int] = set()
LOWEST = 10000


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


RANGE_VARIABLE = "ENGRAM_PORT_RANGE"


def configured_range() -> tuple[int, int] | None:
    """The range ENGRAM_PORT_RANGE ("LOW-HIGH") names, if set: every allocated port comes from it,
    so that processes given disjoint ranges (parallel test workers) never choose the same port."""
    text = os.environ.get(RANGE_VARIABLE, "").strip()
    if not text:
        return None
    low, sep, high = text.partition("-")
    if not (sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 65535):
        raise PortBusy(f"{RANGE_VARIABLE}={text!r} is not LOW-HIGH with 1 <= LOW <= HIGH <= 65535")
    return int(low), int(high)


def claim(port: int, host: str = LOOPBACK) -> bool:
    """Take one chosen port (the endpoint's 6379) if it is free and not handed out yet: clusters
    planned together (the regions of a multi-region cluster) must not both take it before either
    binds it."""
    if port in _handed_out or not is_free(port, host):
        return False
    _handed_out.add(port)
    return True


def _outside_ephemeral(count: int, host: str) -> list[int]:
    # A port from the kernel's ephemeral range can be taken as the source port of any outgoing
    # connection (a journal route, a leaf node dial) between being chosen and being bound, and the
    # server it was chosen for then fails to listen. Ports below that range are never auto-bound.
    chosen_range = configured_range()
    if chosen_range is None:
        low, high = ephemeral_range()
        if low - LOWEST >= 1000:
            chosen_range = LOWEST, low - 1
        elif 65535 - high >= 1000:
            chosen_range = high + 1, 65535
        else:
            return _from_kernel(count, host)
    bottom, top = chosen_range
    candidates = [p for p in range(bottom, top + 1) if p not in _handed_out]
    random.shuffle(candidates)
    chosen: list[int] = []
    for port in candidates:
        if is_free(port, host):
            chosen.append(port)
            _handed_out.add(port)
            if len(chosen) == count:
                return chosen
    raise PortBusy(f"no {count} free ports on {host} in {bottom}..{top}")


def _from_kernel(count: int, host: str) -> list[int]:
    # Hold every socket until all are chosen so the kernel never hands out the same port twice.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(_bind(0, host))
            ports.append(sock.getsockname()[1])
    return ports
