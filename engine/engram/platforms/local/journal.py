"""The local journal: one nats-server per zone on loopback, clustered, with JetStream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from engram import binaries
from engram.journal.servers import (
    SYNC_ALWAYS,
    JournalAuth,
    JournalServerConfig,
    ServerTLS,
    render_config,
    route_url,
)
from engram.platforms.local import ports, processes
from engram.platforms.local.ports import LOOPBACK
from engram.platforms.local.state import JournalState


class JournalNotReady(RuntimeError):
    """The journal servers did not form a JetStream cluster in time."""


def plan_journal(
    name: str,
    zones: Sequence[str],
    directory: str | Path,
    port_numbers: Sequence[int] | None = None,
    hosts: Mapping[str, str] | None = None,
) -> list[JournalState]:
    """One server per zone; port_numbers holds 3 per zone (client, cluster, http) or is allocated;
    hosts gives a zone's address when zones have networks of their own."""
    directory = Path(directory)
    wanted = 3 * len(zones)
    numbers = list(port_numbers) if port_numbers is not None else ports.allocate(wanted)
    if len(numbers) != wanted:
        raise ValueError(f"the journal needs {wanted} ports, got {len(numbers)}")
    servers = []
    for i, zone in enumerate(zones):
        client, cluster, http = numbers[3 * i : 3 * i + 3]
        servers.append(
            JournalState(
                zone=zone,
                name=f"{name}-journal-{zone}",
                port=client,
                cluster_port=cluster,
                http_port=http,
                config=str(directory / "journal" / f"{zone}.conf"),
                store_dir=str(directory / "journal" / zone),
                log=str(directory / "logs" / f"journal-{zone}.log"),
                host=(hosts or {}).get(zone, LOOPBACK),
            )
        )
    return servers


# A server's extra top-level config blocks (a region's leafnodes block, engram.multiregion.link).
ExtraBlocks = Callable[[JournalState], Sequence[str]]


def server_config(
    server: JournalState, peers: Sequence[JournalState], cluster_name: str, sync_interval: str = SYNC_ALWAYS,
    tls: ServerTLS | None = None, auth: JournalAuth | None = None,
    domain: str = "", extra: ExtraBlocks | None = None,
) -> JournalServerConfig:
    """The rendered-config description of one local journal server; a region of a multi-region
    cluster adds its JetStream domain and its links (extra)."""
    routes = tuple(route_url(p.host, p.cluster_port) for p in peers) if len(peers) > 1 else ()
    return JournalServerConfig(
        server_name=server.name,
        zone=server.zone,
        store_dir=server.store_dir,
        cluster_name=cluster_name,
        routes=routes,
        host=server.host,
        port=server.port,
        cluster_port=server.cluster_port,
        http_port=server.http_port,
        sync_interval=sync_interval,
        tls=tls,
        auth=auth,
        jetstream_domain=domain,
        extra_blocks=tuple(extra(server)) if extra else (),
        # A region's blocks hold its accounts and their users (engram.multiregion.link); a region
        # is never started with auth here (`up --regions` refuses --tls).
        users_in_accounts=extra is not None,
    )


def write_configs(
    servers: Sequence[JournalState], cluster_name: str, sync_interval: str = SYNC_ALWAYS,
    tls: ServerTLS | None = None, auth: JournalAuth | None = None,
    domain: str = "", extra: ExtraBlocks | None = None,
) -> None:
    for server in servers:
        path = Path(server.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        Path(server.store_dir).mkdir(parents=True, exist_ok=True)
        text = render_config(
            server_config(server, servers, cluster_name, sync_interval, tls, auth, domain, extra)
        )
        # Passwords are in it when the journal is locked: the owner's eyes only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def server_argv(server: JournalState, nats_server: str) -> list[str]:
    return [nats_server, "--config", server.config]


def go_threads(servers: int, cores: int | None = None) -> int:
    """Each local journal server's share of the machine's cores, at least one.

    The Go runtime runs one thread per core by default, and idle threads spin looking for work
    before they park; with every zone's server on one machine they spin on the same cores. On 2
    cores, three servers taking 4 appends in flight used 0.99 cores at full width and 0.78 at one
    thread each, for the same appends; end to end, writes moved within run-to-run noise."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, servers))


def server_env(servers: int) -> dict[str, str]:
    """The environment of a local journal server: ours, with its share of the cores unless
    GOMAXPROCS is set already."""
    return {"GOMAXPROCS": str(go_threads(servers)), **os.environ}


async def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    """A minimal HTTP/1.0 GET of the monitoring port, without threads."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


async def server_ready(server: JournalState, cluster_size: int, timeout: float = 1.0) -> str:
    """Empty when this server is healthy and sees a meta leader over the whole cluster, else why not."""
    try:
        code, body = await _http_get(server.host, server.http_port, "/healthz", timeout)
        if code != 200:
            return f"healthz {code}: {body.strip()[:200]}"
        if cluster_size > 1:
            _, body = await _http_get(server.host, server.http_port, "/jsz", timeout)
            meta = json.loads(body).get("meta_cluster") or {}
            if not meta.get("leader"):
                return "no JetStream meta leader yet"
            if meta.get("cluster_size", 0) < cluster_size:
                return f"meta group has {meta.get('cluster_size', 0)} of {cluster_size} servers"
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        return f"not answering on {server.host}:{server.http_port} ({exc.__class__.__name__})"
    return ""


async def wait_ready(servers: Sequence[JournalState], timeout: float = 30.0) -> None:
    """Wait until every server reports JetStream healthy in one cluster; raise JournalNotReady if not."""
    deadline = time.monotonic() + timeout
    while True:
        reasons = await asyncio.gather(*(server_ready(s, len(servers)) for s in servers))
        pending = {s.target: r for s, r in zip(servers, reasons, strict=True) if r}
        if not pending:
            return
        if time.monotonic() >= deadline:
            detail = "; ".join(f"{k}: {v}" for k, v in pending.items())
            raise JournalNotReady(f"journal not ready after {timeout:.0f}s: {detail}")
        await asyncio.sleep(0.1)


class LocalJournal:
    """A self-contained 3-zone journal cluster (tests, tools); the supervisor runs its own children."""

    def __init__(
        self, directory: str | Path, zones: Sequence[str] = ("a", "b", "c"), name: str = "engram",
        domain: str = "", extra: ExtraBlocks | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.name = name
        self.servers = plan_journal(name, zones, self.directory)
        self.nats_server = binaries.find("nats-server")
        self.procs: dict[str, subprocess.Popen] = {}
        self.domain = domain
        self.extra = extra
        self.write_configs()

    def write_configs(self) -> None:
        """(Re)write every server's config file; a restart or a reload picks it up."""
        write_configs(self.servers, f"{self.name}-journal", domain=self.domain, extra=self.extra)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def server(self, zone: str) -> JournalState:
        for s in self.servers:
            if s.zone == zone:
                return s
        raise KeyError(f"no journal server in zone {zone!r}")

    def start(self, timeout: float = 30.0) -> None:
        for s in self.servers:
            self.start_server(s.zone)
        self.wait_ready(timeout)

    def start_server(self, zone: str) -> None:
        s = self.server(zone)
        proc = processes.spawn(server_argv(s, self.nats_server), s.log, server_env(len(self.servers)))
        self.procs[zone] = proc
        s.pid = proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        asyncio.run(wait_ready(self.servers, timeout))

    def kill(self, zone: str, sig: signal.Signals = signal.SIGKILL) -> None:
        proc = self.procs[zone]
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(10)

    def restart(self, zone: str) -> None:
        """Start the zone's server again (after kill) with the same config and data."""
        proc = self.procs.get(zone)
        if proc is not None and proc.poll() is None:
            processes.stop_all([proc])
        self.start_server(zone)

    def stop(self) -> None:
        processes.stop_all(list(self.procs.values()))
