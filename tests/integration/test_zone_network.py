"""Zone networks for real: namespaces joined by a bridge, a zone cut off and reconnected, all removed."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engram.platforms.local import network

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(network.unavailable()), reason=network.unavailable() or "available"),
]

# A TCP echo of one line on (address, port), run inside a zone's namespace.
ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(c.recv(100)); c.close()
"""


def _talk(address: str, port: int, timeout: float = 1.0) -> bytes:
    with socket.create_connection((address, port), timeout=timeout) as conn:
        conn.sendall(b"ping")
        return conn.recv(100)


def _in_zone(net: network.ZoneNetwork, zone: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([*net.launcher(zone), sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=20, check=False)


def test_zones_reach_each_other_until_one_is_cut_off_and_again_after_the_heal(tmp_path: Path) -> None:
    net = network.plan_network(str(tmp_path), ["a", "b", "c"])
    network.create(net)
    echo = None
    try:
        a = net.link("a")
        echo = subprocess.Popen([*net.launcher("a"), sys.executable, "-c", ECHO, a.address, "7000"],
                                stdout=subprocess.PIPE, text=True)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        assert _talk(a.address, 7000) == b"ping"  # host to zone
        from_b = f"import socket; c = socket.create_connection(({a.address!r}, 7000), timeout=1); " \
                 "c.sendall(b'zone'); print(c.recv(10).decode())"
        assert _in_zone(net, "b", from_b).stdout.strip() == "zone"  # zone to zone, over the bridge

        network.isolate(net, "a")
        assert network.isolated(net) == ["a"]
        with pytest.raises(OSError):
            _talk(a.address, 7000)
        assert _in_zone(net, "b", from_b).returncode != 0
        # Only zone a is cut off: b and c still see each other.
        b = net.link("b")
        assert _in_zone(net, "c", f"import socket; socket.create_connection(({b.address!r}, 9), timeout=1)"
                        ).stderr.strip().endswith("ConnectionRefusedError: [Errno 111] Connection refused")

        network.heal(net, "a")
        assert network.isolated(net) == []
        assert _talk(a.address, 7000, timeout=5) == b"ping"
    finally:
        if echo is not None:
            echo.kill()
            echo.wait()
        network.destroy(net)
    assert not network.exists(net)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(link.namespace in listed for link in net.links)
