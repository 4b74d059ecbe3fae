"""TCP port allocation on the loopback interface."""

from __future__ import annotations

import contextlib
import socket

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
    """Return count ports: base, base+1, ... (each checked free) or, without base, free ephemeral ports."""
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
    # Hold every socket until all are chosen so the kernel never hands out the same port twice.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(_bind(0, host))
            ports.append(sock.getsockname()[1])
    return ports
