"""Ask the local cluster's nodes about themselves and request switchovers, many at a time.

Everything here talks to a node's control port (NodeState.control_port), never to its client
port: clients are served by Valkey itself there, which knows nothing of ENGRAM.STATUS.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from engram.node.peer import PeerRefused, PeerUnreachable, call, control_tls, parse_status
from engram.platforms.local.ports import LOOPBACK
from engram.platforms.local.state import NodeState

# Generous: a busy machine (CI, a laptop running tests) must not make a live node look down.
STATUS_TIMEOUT = 2.5


class FailoverFailed(RuntimeError):
    """The primary refused or could not complete a switchover."""


class ControlAddress(NamedTuple):
    """Where a node's control port is, and the cluster's CA when it speaks TLS ("": plain text)."""

    host: str
    port: int
    ca_file: str = ""

    def tls(self) -> ssl.SSLContext | None:
        # Verified with the CA and by address: the cluster's certificate names every node's address.
        return control_tls(self.ca_file) if self.ca_file else None


def control_address(node: NodeState) -> ControlAddress:
    return ControlAddress(node.host, node.control_port, node.control_ca)


def control_addresses(nodes: Iterable[NodeState]) -> list[ControlAddress]:
    """Each node's control address, in order: what fetch_all takes."""
    return [control_address(n) for n in nodes]


async def fetch_status(
    port: int, timeout: float = STATUS_TIMEOUT, host: str = LOOPBACK, ca_file: str = ""
) -> dict[str, str] | None:
    """ENGRAM.STATUS from the control port host:port as a dict, or None when it does not answer in time."""
    tls = ControlAddress(host, port, ca_file).tls()
    try:
        return parse_status(await call(host, port, "ENGRAM.STATUS", timeout=timeout, tls=tls))
    except (PeerUnreachable, PeerRefused, ValueError):
        return None


async def fetch_all(
    nodes: Sequence[ControlAddress], timeout: float = STATUS_TIMEOUT
) -> list[dict[str, str] | None]:
    """ENGRAM.STATUS of many nodes at once, in order."""
    return list(await asyncio.gather(*(fetch_status(n.port, timeout, n.host, n.ca_file) for n in nodes)))


async def request_failover(primary: ControlAddress, target: str, timeout: float = 60.0) -> None:
    """Ask the primary to hand leadership to target; FailoverFailed if it will not."""
    try:
        await call(primary.host, primary.port, "ENGRAM.FAILOVER", target, timeout=timeout, tls=primary.tls())
    except PeerRefused as exc:
        raise FailoverFailed(f"the primary refused the switchover to {target}: {exc}") from exc
    except PeerUnreachable as exc:
        raise FailoverFailed(f"switchover to {target} did not complete: {exc}") from exc
