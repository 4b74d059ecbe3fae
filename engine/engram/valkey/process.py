"""The node's private Valkey: started as a child that dies with the node, like a pod's container."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from engram import binaries
from engram.lifetime import dies_with_this_process


class ValkeyStartError(RuntimeError):
    """valkey-server did not come up."""


def valkey_command(
    socket_path: str, data_dir: str, extra: list[str], binary: str | None = None,
    port: int = 0, bind: str = "", module: str | None = None, region: str = "",
    counters: Sequence[str] = (), ttls: Sequence[str] = (),
) -> list[str]:
    """The argv of a persistence-free engine Valkey (see valkey_flags)."""
    flags = valkey_flags(socket_path, data_dir, port, bind, module, region, counters, ttls)
    return [binary or binaries.find("valkey-server"), *flags, *extra]


def valkey_flags(socket_path: str, data_dir: str, port: int = 0, bind: str = "",
                 module: str | None = None, region: str = "", counters: Sequence[str] = (),
                 ttls: Sequence[str] = ()) -> list[str]:
    """Flags every engine Valkey runs with, local process or Kubernetes container alike.

    The node talks to Valkey on the unix socket; clients on port (0: none), where the Engram
    module, loaded from module, holds each write's reply until the journal has committed it.
    """
    listen = ["--port", str(port)] + (["--bind", bind] if bind else [])
    # managed: the module refuses every client command until the node has pushed its role, so
    # nothing runs in the moments between Valkey listening and the node taking charge.
    load = ["--loadmodule", module, "managed", "1"] if module else []
    if module and region:
        load += ["region", region]  # multi-region mode: the module stamps writes with this region
        for pattern in counters:  # keys whose increments add up across regions
            load += ["counters", pattern]
        for pattern in ttls:  # keys whose TTLs replicate and converge
            load += ["ttls", pattern]
    return [
        *listen,
        *load,
        "--unixsocket", socket_path,
        "--unixsocketperm", "700",
        "--dir", data_dir,
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "no",
        # The journal is the durability; the node's replication tap is Valkey's only replica.
        "--repl-diskless-sync", "yes",
        "--repl-diskless-sync-delay", "0",
        "--repl-backlog-size", "64mb",
        "--repl-timeout", "3600",
        "--client-output-buffer-limit", "replica 0 0 0",
        "--maxclients", "20000",
    ]


async def start_valkey(
    socket_path: str, data_dir: str, extra: list[str], binary: str | None = None, timeout: float = 15.0,
    port: int = 0, bind: str = "", module: str | None = None, region: str = "",
    counters: Sequence[str] = (), ttls: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start Valkey and wait until its socket answers."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    log = open(Path(data_dir) / "valkey.log", "ab")
    proc = subprocess.Popen(
        valkey_command(socket_path, data_dir, extra, binary, port, bind, module, region, counters, ttls),
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=dies_with_this_process(),
    )
    log.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            raise ValkeyStartError(
                f"valkey-server exited with code {proc.returncode}; see {Path(data_dir) / 'valkey.log'}"
            )
        try:
            reader, writer = await asyncio.open_unix_connection(socket_path)
            writer.write(b"PING\r\n")
            line = await reader.readline()
            writer.close()
            if line.startswith(b"+PONG"):
                return proc
        except OSError:
            pass
        await asyncio.sleep(0.02)
    proc.kill()
    raise ValkeyStartError(f"valkey-server did not answer on {socket_path} within {timeout:.0f}s")
