"""`engram local upgrade`: a replica-first rolling upgrade of a running local cluster.

The order is the shared plan's (engram.orchestration.upgrade): replicas one at a time, then a
switchover of each shard to an up-to-date replica, then its old primary, so no node on the old
version ever applies a newer engine's journal entries. Each replacement is a node request to the
supervisor (node_requests.py), which records the node's new command or valkey-server in state.json:
a half-done upgrade shows in `engram local status`, and running the same upgrade again resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram.orchestration import upgrade as plan
from engram.platforms.local import probe, processes, requests
from engram.platforms.local.cluster import (
    CRASH_LOOP_RESTARTS,
    LocalError,
    describe,
    failover,
    load_running,
)
from engram.platforms.local.node_requests import NodeRequest, send_request
from engram.platforms.local.state import NODES_STARTED, ClusterState, NodeState

Say = Callable[[str], None]
Live = list[dict[str, str] | None]

# For one step (a node back as a caught-up replica, a switchover, a wait) before giving up.
STEP_TIMEOUT = 120.0
# For the supervisor to carry out a node request: the node's stop (a replica's takes a moment; SIGKILL
# follows after the supervisor's STOP_TIMEOUT) and the new process's start.
REQUEST_TIMEOUT = 30.0
# A node on the old version that has not answered for this long is replaced instead of awaited, as
# the operator does (ROLL_STUCK_GRACE): it serves nothing and may never recover.
STUCK_AFTER = 30.0
POLL = 0.2
_INDEX = re.compile(r"-n(\d+)$")


@dataclass(frozen=True)
class Target:
    """What every node should run: a node command, or a valkey-server (the other stays as it is)."""

    command: list[str] = field(default_factory=list)
    valkey_server: str = ""

    def runs_on(self, node: NodeState) -> bool:
        return (not self.command or node.command == self.command) and (
            not self.valkey_server or node.valkey_server == self.valkey_server)

    def __str__(self) -> str:
        return f"`{shlex.join(self.command)}`" if self.command else f"valkey-server {self.valkey_server}"


def check_target(node_command: str | None, valkey_server: str | None) -> Target:
    """The target the options name, or LocalError saying what is wrong with them."""
    if bool(node_command) == bool(valkey_server):
        raise LocalError("give exactly one of --node-command CMD and --valkey-server PATH")
    if valkey_server:
        return Target(valkey_server=_valkey_server(valkey_server))
    try:
        command = shlex.split(node_command or "")
    except ValueError as exc:
        raise LocalError(f"--node-command {node_command!r}: {exc}") from None
    if not command:
        raise LocalError("--node-command is empty: give the command that runs a node, e.g. "
                         "`python -m engram.node` (it is started as `CMD --config PATH`)")
    program = command[0]
    if "/" in program:
        # The supervisor runs the command from its own working directory, not this one.
        program = str(Path(program).absolute())
        if not (Path(program).is_file() and os.access(program, os.X_OK)):
            raise LocalError(f"--node-command: {command[0]} is not an executable file")
    elif shutil.which(program) is None:
        raise LocalError(f"--node-command: {program} is not on PATH; give its full path")
    return Target(command=[program, *command[1:]])


def _valkey_server(path: str) -> str:
    """The absolute path of an executable that says it is a Valkey server, or LocalError."""
    binary = Path(path).absolute()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise LocalError(f"--valkey-server {path}: not an executable file")
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LocalError(f"--valkey-server {path}: `{binary} --version` failed: {exc}") from None
    said = (out.stdout or out.stderr).strip().splitlines()[:1]
    if out.returncode != 0 or not said or not said[0].startswith("Valkey server"):
        raise LocalError(f"--valkey-server {path}: not a valkey-server (`--version` said "
                         f"{said[0] if said else 'nothing'!r}, exit code {out.returncode})")
    return str(binary)


def upgrade(base: str | Path, name: str, target: Target, *, timeout: float = STEP_TIMEOUT,
            say: Say = lambda _m: None) -> dict[str, Any]:
    """Bring every node of the running cluster onto target, one step at a time; its status after."""
    state = load_running(base, name)
    if state.phase != NODES_STARTED:
        raise LocalError(f"cluster {name} is still starting (phase {state.phase}); upgrade it once it serves")
    if "node_request" not in json.loads(state.path.read_text()):
        raise LocalError(f"cluster {name}'s supervisor predates `engram local upgrade`: restart the cluster "
                         "(`engram local down --keep-data`, then `up`) to upgrade it")
    with requests.exclusive(state):
        record = describe(state, _probe(state))["resharding"]
        if _resharding(record):
            shards = record["to_shards"]
            raise LocalError(f"cluster {name} is resharding to {shards} shards ({record['phase']}); finish "
                             f"that first (`engram local scale {name} --shards {shards}`), then upgrade; "
                             "nothing was changed")
        return _Upgrade(base, name, target, timeout, say).run()


def _resharding(record: dict[str, Any] | None) -> bool:
    return record is not None and record["phase"] != "done"


def _probe(state: ClusterState) -> Live:
    return asyncio.run(probe.fetch_all(probe.control_addresses(state.nodes)))


def upgrade_views(state: ClusterState, live: Live, target: Target,
               silent_since: dict[str, float], now: float) -> list[plan.UpgradeNode]:
    """Each node as the shared plan sees it. Stuck: on the old version and halted (as an old primary
    is once a newer one leads), or silent for STUCK_AFTER; silent_since is kept across calls."""
    views = []
    for position, (node, st) in enumerate(zip(state.nodes, live, strict=True)):
        role = st.get("role", "") if st else ""
        halted = bool(st and st.get("halted"))
        if st is not None:
            silent_since.pop(node.id, None)
        silent = now - silent_since.setdefault(node.id, now) if st is None else 0.0
        match = _INDEX.search(node.id)
        views.append(plan.UpgradeNode(
            id=node.id, shard=node.shard, index=int(match[1]) if match else position, zone=node.zone,
            role=role, ready=role in (plan.PRIMARY, plan.REPLICA) and not halted,
            up_to_date=target.runs_on(node), answering=st is not None, halted=halted,
            applied_seq=_seq(st, "applied_seq"), stuck=halted or silent >= STUCK_AFTER,
        ))
    return views


def _seq(st: dict[str, str] | None, key: str) -> int:
    with contextlib.suppress(ValueError, TypeError):
        return int((st or {}).get(key) or 0)
    return 0


_WAITING = {
    "resharding": "a reshard is running; the upgrade waits until it finishes",
    "not-ready": "waiting for {nodes} to answer and serve",
    "no-target": "waiting for an up-to-date replica of shard {shard} that can take over from {nodes}",
}


class _Upgrade:
    """One run of `engram local upgrade`: ask the plan, carry out its step, wait, ask again."""

    def __init__(self, base: str | Path, name: str, target: Target, timeout: float, say: Say) -> None:
        self.base, self.name, self.target, self.timeout, self.say = base, name, target, timeout, say
        self.silent_since: dict[str, float] = {}
        # The primary's committed entry a replaced node must reach, by node and new pid.
        self.goals: dict[tuple[str, int], int] = {}

    def state(self) -> ClusterState:
        return load_running(self.base, self.name)

    def run(self) -> dict[str, Any]:
        steps = 0
        waiting: tuple[plan.Wait, float] | None = None
        while True:
            state = self.state()
            live = _probe(state)
            resharding = _resharding(describe(state, live)["resharding"])
            views = upgrade_views(state, live, self.target, self.silent_since, time.monotonic())
            step = plan.next_step(views, state.replicas, resharding)
            if isinstance(step, plan.Done):
                break
            if isinstance(step, plan.Wait):
                waiting = self._wait(step, waiting)
                continue
            waiting = None
            steps += 1
            if isinstance(step, plan.Replace):
                self._replace(state, step)
            else:
                self._switch(step)
        state = self.state()
        # Nodes of shards added later run the target too.
        self._ask(state, NodeRequest.new("", self.target.command, self.target.valkey_server))
        self.say(f"every node of {self.name} runs {self.target}" if steps else
                 f"every node of {self.name} already runs {self.target}; nothing to do")
        state = self.state()
        return describe(state, _probe(state))

    def _wait(self, step: plan.Wait, waiting: tuple[plan.Wait, float] | None) -> tuple[plan.Wait, float]:
        """Say what the upgrade waits for (once), and give up after the step timeout."""
        now = time.monotonic()
        if waiting is None or waiting[0] != step:
            self.say(_WAITING[step.why].format(nodes=", ".join(step.nodes), shard=step.shard))
            waiting = (step, now)
        elif now - waiting[1] >= self.timeout:
            why = _WAITING[step.why].format(nodes=", ".join(step.nodes), shard=step.shard)
            raise LocalError(f"the upgrade of {self.name} made no progress for {self.timeout:g}s ({why}); "
                             "run the same command again to resume")
        time.sleep(POLL)
        return waiting

    def _replace(self, state: ClusterState, step: plan.Replace) -> None:
        """Have the supervisor restart the node on the target; return once it is back and caught up."""
        node = state.node(step.node)
        assert node is not None
        why = {"stuck": " (on the old version and not serving)", "no-replica": " (its shard has no replica, "
               "so it is unavailable until the node has replayed the journal)"}.get(step.why, "")
        self.say(f"shard {step.shard}: replacing {step.node}{why}")
        started = time.monotonic()
        self._ask(state, NodeRequest.new(step.node, self.target.command, self.target.valkey_server))
        back = self._until(lambda: self._caught_up(step.node, node.pid, node.restarts),
                           f"{step.node} to come back on the new version as a caught-up replica "
                           f"(log: {node.log})")
        self.say(f"shard {step.shard}: {step.node} runs {self.target} ({back}, "
                 f"{time.monotonic() - started:.1f}s)")

    def _caught_up(self, node_id: str, old_pid: int | None, restarts: int) -> str:
        """What the replaced node says once a new process serves as caught up ("" until then).

        A replica is caught up once it applied what its primary had committed when it first answered
        (writes go on meanwhile); a node that leads its shard (one without replicas) is back when it
        serves."""
        state = self.state()
        node = state.node(node_id)
        if node is None:
            raise LocalError(f"{node_id} is gone from cluster {self.name} (scaled in?); run the upgrade "
                             "again")
        if node.restarts >= restarts + CRASH_LOOP_RESTARTS:
            raise LocalError(f"{node_id} keeps crashing on {self.target} (last exit code {node.last_exit}); "
                             f"log {node.log}:\n{processes.tail(node.log, 8)}")
        if not node.pid or node.pid == old_pid:
            return ""
        shard = [n for n in state.nodes if n.shard == node.shard]
        live = dict(zip((n.id for n in shard), _probe_nodes(shard), strict=True))
        mine = live[node_id]
        if mine is None:
            return ""
        if mine.get("halted"):
            raise LocalError(f"{node_id} halted on {self.target}: {mine['halted']} (log: {node.log})")
        if mine.get("role") == plan.PRIMARY:
            return f"primary, engine {mine.get('engine_version')}"
        primary = next((st for st in live.values() if st and st.get("role") == plan.PRIMARY), None)
        if mine.get("role") != plan.REPLICA or primary is None:
            return ""
        goal = self.goals.setdefault((node_id, node.pid), _seq(primary, "committed_seq"))
        applied = _seq(mine, "applied_seq")
        return f"engine {mine.get('engine_version')}, applied entry {applied}" if applied >= goal else ""

    def _switch(self, step: plan.Switch) -> None:
        """A planned switchover to the up-to-date target; return once it leads and the old one does not."""
        self.say(f"shard {step.shard}: handing over from {step.primary} to {step.target}")
        started = time.monotonic()
        failover(self.base, self.name, step.shard, to=step.target, timeout=self.timeout)

        def moved() -> bool:
            state = self.state()
            pair = [state.node(step.primary), state.node(step.target)]
            if None in pair:
                raise LocalError(f"shard {step.shard} lost {step.primary} or {step.target} (scaled in?); "
                                 "run the upgrade again")
            old, new = _probe_nodes([n for n in pair if n is not None])
            still_leads = bool(old and old.get("role") == plan.PRIMARY)
            return bool(new and new.get("role") == plan.PRIMARY and not still_leads)

        self._until(moved, f"{step.target} to lead shard {step.shard}")
        self.say(f"shard {step.shard}: {step.target} is primary ({time.monotonic() - started:.1f}s)")

    def _ask(self, state: ClusterState, request: NodeRequest) -> None:
        """Send a node request; return once the supervisor has carried it out."""
        requests.delivered(state, lambda: send_request(state, request), "replace its nodes")
        what = f"restart {request.node} on {self.target}" if request.node else "record the target"
        log = Path(state.logs) / "supervisor.log"
        self._until(lambda: requests.carried_out(state, request.id, _node_answer, f"asked to {what}"),
                    f"the supervisor to {what} (log: {log})", REQUEST_TIMEOUT)

    def _until(self, done: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        """Poll done() until it returns something truthy; LocalError naming what after the timeout."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if value := done():
                    return value
            if time.monotonic() >= deadline:
                raise LocalError(f"timed out after {limit:g}s waiting for {what}; run the same command "
                                 "again to resume")
            time.sleep(POLL)


def _probe_nodes(nodes: list[NodeState]) -> Live:
    return asyncio.run(probe.fetch_all(probe.control_addresses(nodes)))


def mixed_versions(doc: dict[str, Any]) -> str:
    """A line saying which nodes run what when they do not all run the same ("" when they do)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for node in doc["nodes"]:
        key = (shlex.join(node.get("command") or []), node.get("valkey_server") or "")
        groups.setdefault(key, []).append(node["id"])
    if len(groups) < 2:
        return ""
    parts = [f"{', '.join(ids)} run `{command}` with {valkey}" for (command, valkey), ids in groups.items()]
    return ("nodes run different versions (an unfinished `engram local upgrade`? run it again): "
            + "; ".join(parts))


def _node_answer(state: ClusterState) -> tuple[str, str]:
    return state.node_request, state.node_request_error
