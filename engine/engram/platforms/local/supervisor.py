"""The background supervisor of a local cluster: starts the journal and the nodes, restarts whatever
crashes (as the kubelet restarts a pod), keeps state.json current and serves the endpoint.

Run as ``python -m engram.platforms.local.supervisor STATE_FILE``; SIGTERM stops the cluster.

Only the supervisor writes state.json, so `engram local scale` asks it for the nodes of added or
removed shards with a shard request (shard_nodes.py):

1. the command writes DIR/NAME/shard-request.json, ``{"id": ..., "shards": N}``, atomically, and
   sends SIGUSR1, which wakes the supervisor (it also looks for the file every POLL_CHILDREN, so
   a lost signal only delays it);
2. the supervisor removes the file, starts nodes for every shard below N that has none (replica
   count, zones by the zone planner, fresh ports, configs as `up` writes them), stops the nodes of
   shards N and above (SIGTERM, then SIGKILL after STOP_TIMEOUT) and forgets them, sets
   state.shards to N and saves state.json with ``shard_request`` = the id (and
   ``shard_request_error`` when it could not);
3. the command waits, with a deadline, until state.json names its id.

The status poll, the endpoint relay and the rebalancer read state.nodes, so they follow at once.
Requests are idempotent: asking again for N shards changes nothing.

`engram local upgrade` asks, the same way, for one node at a time to be replaced with another
command or valkey-server (a node request, node_requests.py), and `engram local scale --replicas` for
replicas to be started and stopped (a replica request, replica_nodes.py). request_handlers.py carries
out all three; this module is the loop and the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from engram.node.config import NodeConfig
from engram.orchestration.provision import ProvisionError, provision
from engram.orchestration.rebalance import NodeView, rebalance
from engram.platforms.local import (
    journal,
    node_requests,
    plan,
    probe,
    processes,
    request_handlers,
    shard_nodes,
)
from engram.platforms.local.link_relay import LinkRelay
from engram.platforms.local.plan import provision_request
from engram.platforms.local.relay import EndpointRelay
from engram.platforms.local.state import (
    FAILED,
    JOURNAL_READY,
    JOURNAL_STARTING,
    NODES_STARTED,
    STOPPING,
    ClusterState,
    JournalState,
    NodeState,
)
from engram.tasks import cancel_and_wait

log = logging.getLogger("engram.supervisor")

POLL_CHILDREN = 0.2
POLL_STATUS = 0.5
# A node slower than this to answer (a loaded machine) is routed around until it answers again.
STATUS_TIMEOUT = 2.0
# Restart backoff: first restart after BACKOFF_MIN, doubling per crash up to BACKOFF_MAX; a child that
# stayed up for STABLE_AFTER seconds starts from the bottom again (Kubernetes: 10 s .. 5 min, 10 min).
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0
JOURNAL_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# Primary rebalancing (orchestration/rebalance.py): looked at this often, and only once no node's
# role has changed for the cluster's rebalance_settle (a failover still settling is not an
# imbalance to undo).
REBALANCE_EVERY = 5.0


@dataclass
class Child:
    """One supervised process: a journal server or an engine node."""

    key: str
    argv: list[str]
    record: NodeState | JournalState
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    # Set while a node request replaces this node: SIGTERM was sent, SIGKILL follows at kill_at, and
    # the exit is no crash: the new process starts at once, and then the request is answered.
    replacing: str | None = None
    kill_at: float = 0.0

    def start(self) -> None:
        self.proc = processes.spawn(self.argv, self.record.log, self.env)
        self.started_at = time.monotonic()
        self.restart_at = None
        self.record.pid = self.proc.pid

    def exited(self) -> int | None:
        """The exit code if the process has ended since the last check (reaping it), else None."""
        if self.proc is None or self.restart_at is not None:
            return None
        return self.proc.poll()


class Supervisor:
    """Runs one cluster's processes from its state file until SIGTERM."""

    def __init__(self, state_path: str | Path) -> None:
        self.state_path = Path(state_path)
        self.state = ClusterState.load(self.state_path)
        self.journal: list[Child] = []
        self.nodes: list[Child] = []
        self.status: dict[str, dict[str, str] | None] = {}
        self.stop = asyncio.Event()
        # Set by SIGUSR1 (a shard request is waiting) and by stopping: the serve loop wakes at once.
        self.wake = asyncio.Event()
        self.relay: EndpointRelay | None = None
        self.link_relays: list[LinkRelay] = []

    def save(self) -> None:
        try:
            self.state.save()
        except OSError as exc:  # the directory may be gone; _serve notices and stops
            log.error("cannot write %s: %s", self.state_path, exc)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._request_stop)
        loop.add_signal_handler(signal.SIGUSR1, self.wake.set)
        self.state.supervisor_pid = os.getpid()
        self.state.phase = JOURNAL_STARTING
        self.save()
        log.info("supervising cluster %s from %s", self.state.name, self.state.dir)
        try:
            await self._start()
            if not self.stop.is_set():
                await self._serve()
        except StartFailed as exc:
            log.error("%s", exc)
            self.state.phase, self.state.error = FAILED, str(exc)
            await self._shutdown(remove_state=False)
            return 1
        except BaseException:
            log.exception("supervisor failed; stopping the cluster")
            await self._shutdown(remove_state=True)
            raise
        await self._shutdown(remove_state=True)
        return 0

    def _request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    async def _start(self) -> None:
        s = self.state
        # Before the journal, whose servers dial the other regions through them at once.
        for other, port, target in s.link_relays:
            relay = LinkRelay(int(port), int(target), s.region, str(other), s.link_cuts_dir)
            try:
                await relay.start()
            except OSError as exc:
                raise StartFailed(f"cannot listen on port {port} for the link to region {other}: "
                                  f"{exc.strerror or exc}") from exc
            self.link_relays.append(relay)
        for server in s.journal:
            argv = [*s.launcher(server.zone), *journal.server_argv(server, s.nats_server)]
            child = Child(server.target, argv, server, journal.server_env(len(s.journal)))
            child.start()
            self.journal.append(child)
        self.save()
        waiting = asyncio.ensure_future(journal.wait_ready(s.journal, JOURNAL_TIMEOUT))
        try:
            while not waiting.done():
                for child in self.journal:
                    code = child.exited()
                    if code is not None:
                        raise StartFailed(
                            f"journal server {child.key} exited with code {code} while starting: "
                            f"{processes.tail(child.record.log, 3)} (log: {child.record.log})"
                        )
                if self.stop.is_set():
                    return
                await asyncio.wait([waiting], timeout=POLL_CHILDREN)
            try:
                waiting.result()
            except journal.JournalNotReady as exc:
                raise StartFailed(str(exc)) from exc
        finally:
            waiting.cancel()
        s.phase = JOURNAL_READY
        self.save()
        log.info("journal ready: %s", ", ".join(s.journal_urls))
        if not s.provisioned:
            try:
                await provision(s.journal_urls, provision_request(s), JOURNAL_TIMEOUT, log.info,
                                s.journal_security, s.restore_security)
            except ProvisionError as exc:
                raise StartFailed(f"provisioning failed: {exc}") from exc
            s.provisioned = True
            s.record_identity()
            self.save()
        self.relay = EndpointRelay(s.endpoint_port, self._relay_targets)
        try:
            await self.relay.start()
        except OSError as exc:
            raise StartFailed(f"cannot listen on the endpoint {s.endpoint}: {exc.strerror or exc}") from exc
        for node in s.nodes:
            child = self._node_child(node)
            child.start()
            self.nodes.append(child)
        s.phase = NODES_STARTED
        self.save()
        log.info("started %d nodes; endpoint %s", len(s.nodes), s.endpoint)

    async def _serve(self) -> None:
        poller = asyncio.ensure_future(self._poll_status())
        balancer = asyncio.ensure_future(self._rebalance()) if self.state.rebalance else None
        try:
            while not self.stop.is_set():
                if not self.state_path.exists():
                    # Someone removed the cluster's directory: nobody can reach this cluster any more.
                    log.warning("state file %s was removed; stopping the cluster", self.state_path)
                    break
                self._tend()
                self.wake.clear()
                # Stopping removed nodes waits here, up to STOP_TIMEOUT a group, and delays restarts
                # by as much: it happens once per scale-in, and nodes stop in well under a second.
                await request_handlers.carry_out_requests(self)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), POLL_CHILDREN)
        finally:
            await cancel_and_wait(poller, balancer)

    def _tend(self) -> None:
        """Notice crashed children and restart them once their backoff has passed."""
        now = time.monotonic()
        changed = False
        for child in self.journal + self.nodes:
            code = child.exited()
            if code is not None and child.replacing is not None:
                child.record.last_exit = code
                self._start_replaced(child)
                changed = True
                continue
            if child.replacing is not None and now >= child.kill_at and child.proc is not None:
                log.warning("%s (pid %d) did not stop within %gs of SIGTERM; killing it",
                            child.key, child.proc.pid, STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.kill_at = now + STOP_TIMEOUT
            if code is not None:
                ran = now - child.started_at
                child.crashes = 1 if ran >= STABLE_AFTER else child.crashes + 1
                delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (child.crashes - 1))
                child.restart_at = now + delay
                child.record.last_exit = code
                child.record.pid = None
                self.status.pop(child.key, None)
                changed = True
                log.warning(
                    "%s (pid %d) exited with code %d after %.1fs; restarting in %.1fs",
                    child.key,
                    child.proc.pid if child.proc else 0,
                    code,
                    ran,
                    delay,
                )
            if child.restart_at is not None and now >= child.restart_at:
                child.start()
                child.record.restarts += 1
                changed = True
                log.info("restarted %s as pid %d", child.key, child.record.pid)
        if changed:
            self.save()

    def _node_child(self, node: NodeState) -> Child:
        """The supervised process of a node, with what it runs recorded on its state."""
        s = self.state
        node.command = node_command(s, node)
        node.valkey_server = node.valkey_server or s.valkey_server
        return Child(node.id, [*s.launcher(node.zone), *node.command, "--config", node.config], node)

    def _start_replaced(self, child: Child) -> None:
        """Start a replaced node's new process and answer its request: whatever answers on the node's
        ports from now on is the new process."""
        child.start()
        log.info("replaced %s: pid %d runs %s", child.key, child.record.pid, shlex.join(child.argv))
        self.state.node_request, self.state.node_request_error = child.replacing or "", ""
        child.replacing = None
        self.save()

    def replace_node(self, request: node_requests.NodeRequest) -> None:
        """Record the node's new command and binary, and stop it: _tend starts it again with them."""
        child = next((c for c in self.nodes if c.key == request.node), None)
        if child is None or not isinstance(child.record, NodeState):
            raise LookupError(f"cluster {self.state.name} has no node {request.node}")
        node = child.record
        if request.valkey_server:
            config = NodeConfig.load(node.config)
            replace(config, valkey_server=request.valkey_server).dump(node.config)
            node.valkey_server = request.valkey_server
        if request.command:
            node.command = list(request.command)
        child.argv = [*self.state.launcher(node.zone), *node.command, "--config", node.config]
        log.info("node request %s: replacing %s to run %s with %s", request.id, node.id,
                 shlex.join(node.command), node.valkey_server)
        child.replacing = request.id
        running = child.proc is not None and child.restart_at is None and child.proc.poll() is None
        if not running:
            # Exited and waiting out its backoff (or reaped just now): start it at once, as replaced.
            self._start_replaced(child)
            return
        assert child.proc is not None
        child.kill_at = time.monotonic() + STOP_TIMEOUT
        self.save()
        with contextlib.suppress(ProcessLookupError):
            child.proc.terminate()

    def start_nodes(self, added: list[NodeState], shards: int | None = None) -> None:
        """Configure and start new nodes, of a cluster of `shards` shards (default: as many as now).

        Their data directories are emptied first: a node removed earlier under the same id left its
        files there, which a new node must not start from (it restores from snapshots and journal)."""
        s = self.state
        if not added:
            return
        configs = plan.node_configs(replace(s, shards=shards or s.shards), added, node_log_level(s))
        shard_nodes.clear_data(added)
        plan.write_node_configs(added, configs)
        s.nodes.extend(added)
        for node in added:
            child = self._node_child(node)
            child.start()
            self.nodes.append(child)
        self.save()
        log.info("started %s", ", ".join(f"{n.id} (zone {n.zone}, pid {n.pid})" for n in added))

    async def stop_nodes(self, gone: set[str]) -> None:
        """Forget the named nodes (those the cluster has), then stop them, replicas first."""
        s = self.state
        gone &= {n.id for n in s.nodes}
        if not gone:
            return
        victims = [c for c in self.nodes if c.key in gone]
        self.nodes = [c for c in self.nodes if c.key not in gone]
        s.nodes = [n for n in s.nodes if n.id not in gone]
        # Replicas first: a primary told to stop hands its shard to a live replica, which would only
        # spend time on a shard that holds no slot any more.
        first = [c for c in victims if (self.status.get(c.key) or {}).get("role") != "primary"]
        last = [c for c in victims if c not in first]
        for group in (first, last):
            await processes.stop_all_async([c.proc for c in group if c.proc is not None], STOP_TIMEOUT)
        for key in gone:
            self.status.pop(key, None)
        log.info("stopped %s", ", ".join(sorted(gone)))

    async def _poll_status(self) -> None:
        """Learn every node's role every POLL_STATUS seconds, for the endpoint relay."""
        while True:
            nodes = self.state.nodes
            try:
                replies = await probe.fetch_all(probe.control_addresses(nodes), timeout=STATUS_TIMEOUT)
            except Exception:  # a probe bug must not stop the relay from routing
                log.exception("status poll failed")
            else:
                self.status = {n.id: r for n, r in zip(nodes, replies, strict=True)}
                self._note_endpoint_node()
            await asyncio.sleep(POLL_STATUS)

    async def _rebalance(self) -> None:
        """Move primaries back to an even spread over zones, one planned switchover at a time."""
        roles: dict[str, str] = {}
        changed_at = time.monotonic()
        while True:
            await asyncio.sleep(REBALANCE_EVERY)
            views = node_views(self.state.nodes, self.status)
            now = time.monotonic()
            if (current := {v.id: v.role for v in views}) != roles:
                roles, changed_at = current, now
                continue
            if now - changed_at < self.state.rebalance_settle or (move := rebalance(views)) is None:
                continue
            primary = next(n for n in self.state.nodes if n.id == move.primary)
            log.info("rebalancing primaries: shard %d from %s (zone %s) to %s (zone %s)",
                     move.shard, move.primary, move.from_zone, move.target, move.to_zone)
            try:
                await probe.request_failover(probe.control_address(primary), move.target)
            except probe.FailoverFailed as exc:
                log.warning("rebalancing switchover of shard %d not done: %s", move.shard, exc)
            changed_at = time.monotonic()

    def _note_endpoint_node(self) -> None:
        """Record which node the endpoint routes to, so `up` can wait for it and status can show it."""
        targets = self._relay_targets()
        first = next((n for n in self.state.nodes if targets and (n.host, n.client_port) == targets[0]), None)
        chosen = first.id if first is not None and self._is_shard0_primary(first) else ""
        if chosen != self.state.endpoint_node:
            self.state.endpoint_node = chosen
            self.save()
            log.info("endpoint now routes to %s", chosen or "any live node (no primary known)")

    def _is_shard0_primary(self, node: NodeState) -> bool:
        st = self.status.get(node.id)
        return node.shard == 0 and st is not None and st.get("role") == "primary" and not st.get("halted")

    def _relay_targets(self) -> list[tuple[str, int]]:
        """Shard 0's primary first, then other answering nodes of shard 0, then the rest."""

        def rank(node: NodeState) -> tuple[int, int]:
            if self._is_shard0_primary(node):
                return (0, 0)
            if self.status.get(node.id) is None:
                return (3, node.shard)
            return (1 if node.shard == 0 else 2, node.shard)

        return [(n.host, n.client_port) for n in sorted(self.state.nodes, key=rank)]

    async def _shutdown(self, remove_state: bool) -> None:
        """Stop the relay, then the nodes, then the journal; forget the cluster if asked."""
        self.state.phase = STOPPING if remove_state else self.state.phase
        if remove_state:
            self.save()
        if self.relay is not None:
            await self.relay.close()
        for group in (self.nodes, self.journal):
            procs = [c.proc for c in group if c.proc is not None]
            # Waiting blocks the loop, which is fine: nothing else runs while shutting down.
            processes.stop_all(procs, STOP_TIMEOUT)
            for c in group:
                c.record.pid = None
        for relay in self.link_relays:  # after the journal, whose leaf nodes would dial again
            await relay.close()
        if remove_state:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
        else:
            self.save()
        log.info("cluster %s stopped", self.state.name)


class StartFailed(RuntimeError):
    """The cluster could not be started; the message says why."""


def node_views(nodes: list[NodeState], status: dict[str, dict[str, str] | None]) -> list[NodeView]:
    """What the rebalancer needs of each node, from the last status poll (None: did not answer)."""
    views = []
    for node in nodes:
        answer = status.get(node.id)
        role = answer.get("role", "") if answer else "unknown"
        healthy = answer is not None and not answer.get("halted") and role in ("primary", "replica")
        applied = int(answer.get("applied_seq") or 0) if answer else 0
        views.append(NodeView(node.id, node.shard, node.zone, role, healthy, applied))
    return views


def node_log_level(state: ClusterState) -> str:
    """The log level `up` gave the nodes (it is in their configs only), for nodes started later."""
    for node in state.nodes:
        with contextlib.suppress(OSError, ValueError, TypeError):
            return NodeConfig.load(node.config).log_level
    return "warning"


def node_command(state: ClusterState, node: NodeState) -> list[str]:
    """What the node runs before `--config PATH`: its recorded command (an upgrade changes it), else
    `up --node-command` or ENGRAM_NODE_COMMAND (profilers, test doubles), else `python -m engram.node`."""
    command = node.command or state.node_command or shlex.split(os.environ.get("ENGRAM_NODE_COMMAND", ""))
    return list(command or [sys.executable, "-m", "engram.node"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m engram.platforms.local.supervisor STATE_FILE", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("ENGRAM_SUPERVISOR_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Plain asyncio, not uvloop: the relay is light, and libuv's child handling stays out of the way
    # of the subprocess.Popen children reaped here.
    return asyncio.run(Supervisor(args[0]).run())


if __name__ == "__main__":
    sys.exit(main())

