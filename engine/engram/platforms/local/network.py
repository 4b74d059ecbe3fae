"""Zone networks: each zone of a local cluster in its own network namespace, all joined by one bridge,
so a whole zone can be cut off (a partition) while the others go on, as when a data centre is lost.

The host keeps the bridge's address, so the endpoint relay, `engram local` and clients on the host reach
every zone. Needs root and iproute2's `ip`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Linux interface names hold at most 15 bytes.
MAX_IFNAME = 15
# Subnets are picked from 10.200.0.0/13 .. 10.255/16 to stay clear of common LAN and cloud ranges.
_FIRST_SECOND_OCTET = 200
_SECOND_OCTETS = 56
_IFF_UP = 0x1


class NetworkError(RuntimeError):
    """A zone network could not be created or changed; the message names the failing command."""


@dataclass
class ZoneLink:
    """One zone's namespace and the veth joining it to the bridge."""

    zone: str
    namespace: str
    host_if: str  # the host's end of the veth, enslaved to the bridge; down means partitioned
    zone_if: str
    address: str


@dataclass
class ZoneNetwork:
    bridge: str
    gateway: str  # the bridge's address, with prefix length
    links: list[ZoneLink] = field(default_factory=list)

    def link(self, zone: str) -> ZoneLink:
        for link in self.links:
            if link.zone == zone:
                return link
        raise KeyError(zone)

    def launcher(self, zone: str) -> list[str]:
        """The argv prefix that runs a command inside the zone's namespace."""
        return [_ip(), "netns", "exec", self.link(zone).namespace]

    @classmethod
    def from_dict(cls, data: dict) -> ZoneNetwork:
        links = [ZoneLink(**link) for link in data.get("links", [])]
        return cls(bridge=data["bridge"], gateway=data["gateway"], links=links)


def _ip() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_ip(), *args], capture_output=True, text=True, timeout=15, check=False)


def _check(*args: str) -> None:
    done = _run(*args)
    if done.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` failed: {(done.stderr or done.stdout).strip()}")


def unavailable() -> str:
    """Empty when zone networks can be made here, else why not (checked by making a namespace)."""
    if os.geteuid() != 0:
        return "zone networks need root (network namespaces and veth links)"
    if shutil.which("ip") is None:
        return "zone networks need iproute2's `ip` on PATH (apt-get install iproute2)"
    probe = f"engram-probe-{os.getpid()}"
    done = _run("netns", "add", probe)
    if done.returncode != 0:
        return f"this machine refuses to create a network namespace: {done.stderr.strip()}"
    _run("netns", "del", probe)
    return ""


def _used_subnets() -> set[ipaddress.IPv4Network]:
    done = _run("-o", "-4", "addr", "show")
    found = set()
    for line in done.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            found.add(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return found


def plan_network(
    key: str, zones: Sequence[str], taken: Iterable[ipaddress.IPv4Network] | None = None
) -> ZoneNetwork:
    """Name the bridge, namespaces and links of a cluster (key: its directory) and pick a free /24."""
    digest = hashlib.sha256(key.encode()).digest()
    tag = digest[:3].hex()
    busy = set(_used_subnets() if taken is None else taken)
    start = int.from_bytes(digest[3:5], "big")
    for step in range(_SECOND_OCTETS * 256):
        n = (start + step) % (_SECOND_OCTETS * 256)
        subnet = ipaddress.ip_network(f"10.{_FIRST_SECOND_OCTET + n // 256}.{n % 256}.0/24")
        if not any(subnet.overlaps(other) for other in busy):
            break
    else:
        raise NetworkError("no free /24 left in 10.200.0.0-10.255.255.255 for a zone network")
    hosts = list(subnet.hosts())
    if len(zones) > len(hosts) - 1:
        raise NetworkError(f"a zone network holds at most {len(hosts) - 1} zones, got {len(zones)}")
    links = [
        ZoneLink(
            zone=zone,
            namespace=f"engram-{tag}-{zone}",
            host_if=f"eg{tag}h{i}",
            zone_if=f"eg{tag}z{i}",
            address=str(hosts[i + 1]),
        )
        for i, zone in enumerate(zones)
    ]
    for link in links:
        if len(link.host_if) > MAX_IFNAME:
            raise NetworkError(f"interface name {link.host_if} is longer than {MAX_IFNAME} bytes")
    return ZoneNetwork(bridge=f"eg{tag}br", gateway=f"{hosts[0]}/{subnet.prefixlen}", links=links)


def create(net: ZoneNetwork) -> None:
    """Make the bridge, one namespace per zone and the veths; undo everything if a step fails."""
    prefix = net.gateway.split("/")[1]
    try:
        _check("link", "add", net.bridge, "type", "bridge")
        _check("addr", "add", net.gateway, "dev", net.bridge)
        _check("link", "set", net.bridge, "up")
        for link in net.links:
            _check("netns", "add", link.namespace)
            _check("-n", link.namespace, "link", "set", "lo", "up")
            _check("link", "add", link.host_if, "type", "veth", "peer", "name", link.zone_if,
                   "netns", link.namespace)
            _check("link", "set", link.host_if, "master", net.bridge, "up")
            _check("-n", link.namespace, "addr", "add", f"{link.address}/{prefix}", "dev", link.zone_if)
            _check("-n", link.namespace, "link", "set", link.zone_if, "up")
    except BaseException:
        destroy(net)
        raise


def destroy(net: ZoneNetwork) -> None:
    """Remove the namespaces (taking their veths along) and the bridge; what is already gone is fine."""
    for link in net.links:
        _run("netns", "del", link.namespace)
        _run("link", "del", link.host_if)
    _run("link", "del", net.bridge)


def exists(net: ZoneNetwork) -> bool:
    return Path("/sys/class/net", net.bridge).exists()


def isolate(net: ZoneNetwork, zone: str) -> None:
    """Cut the zone off from every other zone and from the host: its link goes down."""
    _check("link", "set", net.link(zone).host_if, "down")


def heal(net: ZoneNetwork, zone: str) -> None:
    _check("link", "set", net.link(zone).host_if, "up")


def isolated(net: ZoneNetwork) -> list[str]:
    """The zones whose link is down right now."""
    cut = []
    for link in net.links:
        with contextlib.suppress(OSError, ValueError):
            flags = int(Path("/sys/class/net", link.host_if, "flags").read_text(), 16)
            if not flags & _IFF_UP:
                cut.append(link.zone)
    return cut
