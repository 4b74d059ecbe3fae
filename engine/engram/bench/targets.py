"""The systems a benchmark compares: plain Valkey, Valkey with fsync-always AOF, and Engram."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import redis

from engram import binaries
from engram.bench.endpoint import Endpoint
from engram.platforms.local import cluster, ports, processes
from engram.platforms.local.plan import ClusterSpec
from engram.platforms.local.ports import LOOPBACK

__all__ = ["Endpoint", "EngramTarget", "Target", "TargetError", "ValkeyTarget", "plain_valkey", "valkey_aof"]

Progress = Callable[[str], None]
READY_TIMEOUT = 30.0


class TargetError(RuntimeError):
    """A benchmark target could not be started or reached."""


class Target(Protocol):
    name: str
    description: str

    def start(self, progress: Progress) -> Endpoint: ...

    def stop(self) -> None: ...


def wait_ping(address: str, timeout: float = READY_TIMEOUT) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with redis.Redis(host=host, port=int(port), socket_timeout=2, socket_connect_timeout=1) as r:
                if r.ping():
                    return
        except redis.RedisError as exc:
            if time.monotonic() >= deadline:
                raise TargetError(f"{address} did not answer PING within {timeout:g}s: {exc}") from None
        time.sleep(0.1)


@dataclass
class ValkeyTarget:
    """Unmodified valkey-server processes on loopback: one, or a cluster of `shards` primaries."""

    name: str
    description: str
    extra_args: tuple[str, ...] = ()
    shards: int = 1
    _dir: Path | None = field(default=None, init=False)
    _procs: list[subprocess.Popen] = field(default_factory=list, init=False)

    def start(self, progress: Progress) -> Endpoint:
        server = binaries.find("valkey-server")
        self._dir = Path(tempfile.mkdtemp(prefix=f"engram-bench-{self.name}-"))
        addresses = []
        for index, port in enumerate(ports.allocate(self.shards)):
            data = self._dir / f"s{index}"
            data.mkdir()
            argv = [server, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--dir", str(data),
                    "--protected-mode", "no", "--daemonize", "no", *self.extra_args]
            if self.shards > 1:
                # The bus port too: Valkey's default (port + 10000) can fall in the kernel's ephemeral
                # range, where any outgoing connection may hold it (a CI run lost a node that way).
                argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-port", str(ports.allocate(1)[0])]
            self._procs.append(processes.spawn(argv, self._dir / f"s{index}.log"))
            addresses.append(f"{LOOPBACK}:{port}")
        for address in addresses:
            wait_ping(address)
        if self.shards > 1:
            self._create_cluster(addresses)
        args = " ".join(self.extra_args) or "(defaults)"
        progress(f"{self.name}: valkey-server {args} at {', '.join(addresses)}")
        return Endpoint(tuple(addresses), cluster=self.shards > 1, note="valkey-server on loopback TCP")

    def _create_cluster(self, addresses: list[str]) -> None:
        cli = binaries.find("valkey-cli")
        done = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if done.returncode != 0:
            raise TargetError(f"{cli} --cluster create failed: {done.stdout[-500:]}{done.stderr[-500:]}")
        host, port = addresses[0].rsplit(":", 1)
        deadline = time.monotonic() + READY_TIMEOUT
        with redis.Redis(host=host, port=int(port), socket_timeout=2, decode_responses=True) as r:
            while r.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() >= deadline:
                    raise TargetError(f"Valkey cluster at {addresses[0]} is not ok after {READY_TIMEOUT:g}s")
                time.sleep(0.2)

    def stop(self) -> None:
        processes.stop_all(self._procs)
        self._procs.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def plain_valkey(shards: int = 1) -> ValkeyTarget:
    return ValkeyTarget("valkey", "Valkey, in memory only (no persistence)", ("--appendonly", "no"), shards)


def valkey_aof(shards: int = 1) -> ValkeyTarget:
    return ValkeyTarget(
        "valkey-aof",
        "Valkey, appendonly yes + appendfsync always",
        ("--appendonly", "yes", "--appendfsync", "always"),
        shards,
    )


@dataclass
class EngramTarget:
    """An Engram local cluster started in a temporary directory, or an existing one at `endpoint`."""

    shards: int = 1
    replicas: int = 2
    zones: tuple[str, ...] = ("a", "b", "c")
    lease_seconds: float = 2.0
    journal_sync: str = "always"
    endpoint: str | None = None
    name: str = "engram"
    tls: bool = False
    description: str = "Engram: Valkey + every write committed to a 3-zone JetStream journal"
    _base: Path | None = field(default=None, init=False)
    _cluster_name: str = field(default="bench", init=False)

    def start(self, progress: Progress) -> Endpoint:
        if self.endpoint:
            wait_ping(self.endpoint)
            note = f"existing cluster at {self.endpoint}"
            return Endpoint((self.endpoint,), cluster=self.shards > 1, note=note)
        # Short path: Valkey's unix socket lives under it and must stay within 107 bytes.
        self._base = Path(tempfile.mkdtemp(prefix="eg-bench-", dir="/tmp"))
        spec = ClusterSpec(
            name=self._cluster_name,
            shards=self.shards,
            replicas=self.replicas,
            zones=self.zones,
            lease_seconds=self.lease_seconds,
            journal_sync=self.journal_sync,
            tls=self.tls,
            # The journal locked; the load generators speak plain text to the nodes.
            client_tls=False if self.tls else None,
        )
        try:
            doc = cluster.up(spec, self._base, progress=lambda m: progress(f"engram: {m}"))
        except BaseException:
            self.stop()
            raise
        if self.shards == 1:
            primary = next(n for n in doc["nodes"] if n["role"] == "primary")
            note = (f"through shard 0's primary {primary['address']} ({primary['id']}); the endpoint relay "
                    f"{doc['endpoint']} is bypassed since 1 shard needs no routing")
            wait_ping(primary["address"])
            return Endpoint((primary["address"],), cluster=False, note=note)
        return Endpoint((doc["endpoint"],), cluster=True, note=f"cluster endpoint {doc['endpoint']}")

    def stop(self) -> None:
        if self._base is None:
            return
        base, self._base = self._base, None
        try:
            cluster.down(base, self._cluster_name)
        except cluster.LocalError:
            pass  # nothing is running: nothing to stop
        finally:
            from engram.platforms.local.testing import force_cleanup  # last resort after a failed `down`

            with contextlib.suppress(Exception):
                force_cleanup(self._cluster_name, base)
            shutil.rmtree(base, ignore_errors=True)
