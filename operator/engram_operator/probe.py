"""Asks engine nodes who they are (ENGRAM.STATUS), requests planned switchovers (ENGRAM.FAILOVER)
and snapshots (ENGRAM.SNAPSHOT).

All on the node's control port (ADMIN_PORT): the client port is Valkey's own and knows none of them.
With spec.tls that port speaks TLS: the operator trusts the CA of the cluster's certificate Secret and
checks the pod's DNS name (it dials the pod's IP, which the certificate does not name).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engram.node.peer import PeerRefused, PeerUnreachable, call, control_tls
from engram_operator import constants, kube, labels
from engram_operator.builders.common import fqdn
from engram_operator.decisions import SnapshotResult, SnapshotTarget
from engram_operator.observe import EngineStatus, PodInfo, parse_engine_status
from engram_operator.spec import ClusterSpec

TIMEOUT = 2.0
SWITCHOVER_TIMEOUT = 10.0
# A snapshot replays the journal since the newest one into a scratch Valkey, saves, uploads and
# rehearses it: minutes for a large shard. The reconcile never waits for it (reconcile.py runs it
# as a task of its own), so this only bounds how long a request can stay in progress.
SNAPSHOT_TIMEOUT = 600.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlTls:
    """How to reach a TLS cluster's control ports: its CA, and each pod's DNS name to check."""

    context: ssl.SSLContext
    cluster: ClusterSpec

    def server_name(self, pod: str) -> str:
        return fqdn(pod, labels.headless_service_name(self.cluster.name), self.cluster)


@dataclass(frozen=True)
class Target:
    """One pod's control port as the operator dials it."""

    ip: str
    pod: str = ""
    tls: ControlTls | None = None

    async def call(self, *args: str, timeout: float) -> object:
        if self.tls is None:
            return await call(self.ip, constants.ADMIN_PORT, *args, timeout=timeout)
        return await call(self.ip, constants.ADMIN_PORT, *args, timeout=timeout, tls=self.tls.context,
                          server_hostname=self.tls.server_name(self.pod))


async def cluster_control_tls(cluster: ClusterSpec) -> ControlTls | None:
    """spec.tls: the CA from the cluster's certificate Secret (read each reconcile: it may be
    renewed); None without spec.tls, or while the Secret or its ca.crt is missing."""
    if cluster.tls is None:
        return None
    secret = await kube.get_secret(cluster.namespace, cluster.tls.client_secret(cluster.name))
    ca = ((secret or {}).get("data") or {}).get(constants.TLS_CA)
    if not ca:
        return None
    return ControlTls(control_tls(ca_data=base64.b64decode(ca).decode()), cluster)


def target(pod: PodInfo, tls: ControlTls | None) -> Target:
    """The pod's control port; TLS where its node serves it (its config says so), whatever the spec,
    so that pods an older operator made stay reachable until they are rolled."""
    return Target(pod.ip, pod.name, tls if pod.control_tls else None)


async def engine_status(where: Target) -> EngineStatus | None:
    """None when the node does not answer (starting, or gone): the caller keeps the last label."""
    try:
        return parse_engine_status(await where.call("ENGRAM.STATUS", timeout=TIMEOUT))
    except (PeerUnreachable, PeerRefused, ValueError):
        return None


async def all_statuses(pods: list[PodInfo], tls: ControlTls | None = None) -> dict[str, EngineStatus]:
    """Probe every running pod concurrently."""
    running = [p for p in pods if p.ip and p.phase == "Running" and not p.deleting]
    answers = await asyncio.gather(*(engine_status(target(p, tls)) for p in running))
    return {p.name: s for p, s in zip(running, answers, strict=True) if s is not None}


def _target(where: str | Target) -> Target:
    """A bare IP is a pod whose control port is plain text."""
    return Target(where) if isinstance(where, str) else where


async def switchover(where: str | Target, target_node_id: str) -> None:
    """Planned failover: the primary at ``where`` hands leadership to a caught-up replica."""
    await _target(where).call("ENGRAM.FAILOVER", target_node_id, timeout=SWITCHOVER_TIMEOUT)


async def snapshot(where: str | Target) -> str:
    """Ask the replica at ``where`` to take, verify and store a snapshot of its shard now; its reply."""
    reply = await _target(where).call("ENGRAM.SNAPSHOT", timeout=SNAPSHOT_TIMEOUT)
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


async def take_snapshots(
    targets: Sequence[SnapshotTarget], ips: Mapping[str, str | Target]
) -> list[SnapshotResult]:
    """Every shard's snapshot at once (each on its own replica); one result per target, never raises."""

    async def one(target: SnapshotTarget) -> SnapshotResult:
        if not target.pod:
            return SnapshotResult(target.shard, "", False, target.problem)
        where = f"shard {target.shard} on {target.pod}"
        try:
            reply = await snapshot(ips[target.pod])
        except PeerRefused as err:
            return SnapshotResult(target.shard, target.pod, False, f"{where}: refused: {err}")
        except PeerUnreachable as err:
            return SnapshotResult(
                target.shard,
                target.pod,
                False,
                f"{where}: no answer within {SNAPSHOT_TIMEOUT:g}s, or the connection failed ({err}); "
                "the node may still finish it (status.shards[].snapshotSeq shows the newest)",
            )
        except Exception as err:  # a task nobody awaits must still produce its result
            log.exception("snapshot of %s failed", where)
            return SnapshotResult(target.shard, target.pod, False, f"{where}: {err!r}")
        return SnapshotResult(target.shard, target.pod, True, reply)

    return list(await asyncio.gather(*(one(t) for t in targets)))
