"""`engram local scale`: add or remove shards of a running local cluster while it serves.

Scale-out: the new shards' journal streams first (prepare_shards), then their nodes (a shard request
to the supervisor, see supervisor.py), then reshard() moves slots onto them. Scale-in: reshard()
empties the highest shards and, once they own nothing, calls back here to stop their nodes before
it deletes their streams. The progress lives in the cluster metadata, where every node reports it
(ENGRAM.STATUS `reshard`), so `status` shows it and a rerun resumes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engram.journal.errors import JournalError
from engram.platforms.local import probe, requests
from engram.platforms.local.cluster import LocalError, describe, load_running
from engram.platforms.local.shard_nodes import ShardRequest, send_request, serves_tls
from engram.platforms.local.state import NODES_STARTED, ClusterState
from engram.resharding.mover import MoveOptions
from engram.resharding.record import ReshardRecord, format_duration
from engram.resharding.run import (
    MAX_SHARDS,
    ReshardError,
    ReshardOptions,
    current_record,
    prepare_shards,
    reshard,
)

# For the supervisor to carry out a shard request: starting is quick; stopping gives each of two
# groups (replicas, then primaries) the supervisor's STOP_TIMEOUT.
REQUEST_TIMEOUT = 60.0


class ScaleRefused(LocalError):
    """The request does not fit the cluster (the same shard count, out of range): a usage error."""


def check_shards(shards: int) -> int:
    """The shard count, or ScaleRefused naming the range."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ScaleRefused(f"--shards must be between 1 and {MAX_SHARDS}, got {shards}")
    return shards


def scale(base: str | Path, name: str, shards: int, *, max_keys_per_second: int | None = None,
          chunk_slots: int | None = None, user: str = "", password: str = "",
          progress: Callable[[ReshardRecord], None] = lambda _r: None,
          say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Reshard the running cluster to `shards` shards; its status afterwards ("resharding" says how).

    user and password: the Valkey user that moves keys, for clusters whose users file locks out default."""
    check_shards(shards)
    state = load_running(base, name)
    if state.phase != NODES_STARTED:
        raise LocalError(f"cluster {name} is still starting (phase {state.phase}); scale it once it serves")
    if "shard_request" not in json.loads(state.path.read_text()):
        raise LocalError(f"cluster {name}'s supervisor predates `engram local scale`: restart the cluster "
                         "(`engram local down --keep-data`, then `up`) to scale it")
    with requests.exclusive(state):
        last = _last_reshard(state)
        if last is not None and last["phase"] not in ("done", "failed") and last["to_shards"] != shards:
            # Checked here, not only by reshard(): by then new shards' nodes would have been started.
            raise LocalError(f"cluster {name} is still resharding to {last['to_shards']} shards "
                             f"({last['phase']}); finish that first (`engram local scale {name} --shards "
                             f"{last['to_shards']}`), then change the count")
        resumable = last is not None and last["phase"] != "done" and last["to_shards"] == shards
        if shards == state.shards and not resumable:
            raise ScaleRefused(f"cluster {name} already has {shards} shards")
        move = MoveOptions(username=user, password=password)
        if serves_tls(state) and state.local_tls is not None:
            # The mover reaches the nodes' TLS fronts; Valkey's MIGRATE goes to the targets' own ports.
            move.tls_ca_file = state.local_tls.ca_file
        if max_keys_per_second is not None:
            move.max_keys_per_second = max_keys_per_second
        options = ReshardOptions(move=move)
        if chunk_slots is not None:
            options.chunk_slots = chunk_slots
        return asyncio.run(_scale(state, shards, options, progress, say))


def unfinished(base: str | Path, name: str) -> int | None:
    """The shard count an unfinished (or failed) reshard of the cluster goes to; None when none is."""
    last = _last_reshard(load_running(base, name))
    return int(last["to_shards"]) if last is not None and last["phase"] != "done" else None


def _last_reshard(state: ClusterState) -> dict[str, Any] | None:
    """The newest reshard record (it may be unfinished: rerunning its count resumes it), read from the
    metadata: a node's report can lag behind a reshard that just finished."""
    try:
        record = asyncio.run(current_record(state.journal_urls, state.name, state.journal_security))
    except (ReshardError, JournalError) as exc:
        raise LocalError(f"cannot read cluster {state.name}'s reshard record: {exc}") from exc
    return asdict(record) if record is not None else None


async def _scale(state: ClusterState, shards: int, options: ReshardOptions,
                 progress: Callable[[ReshardRecord], None], say: Callable[[str], None]) -> dict[str, Any]:
    name, urls, security = state.name, state.journal_urls, state.journal_security
    try:
        if shards > state.shards:
            added = list(range(state.shards, shards))
            say(f"{_shards(added)}: creating journal streams")
            await prepare_shards(urls, name, shards, security)
            state = await ask_supervisor(state, shards)
            started = [n.id for n in state.nodes if n.shard in added]
            say(f"{_shards(added)}: started {', '.join(started)}")

        async def stop_drained(removed: list[int]) -> None:
            nonlocal state
            say(f"{_shards(removed)} {'own' if len(removed) > 1 else 'owns'} no slot any more; "
                "stopping their nodes")
            state = await ask_supervisor(state, min(removed))

        final = await reshard(urls, name, shards, security=security, progress=progress,
                              on_drained=stop_drained, options=options)
        if any(n.shard >= shards for n in state.nodes):
            # A run interrupted while stopping them: this rerun had nothing left to drain.
            state = await ask_supervisor(state, shards)
    except (ReshardError, JournalError) as exc:
        raise LocalError(f"scaling {name} to {shards} shards failed: {exc}; run the same command again "
                         "to resume") from exc
    current = ClusterState.load(state.path)
    doc = describe(current, await probe.fetch_all(probe.control_addresses(current.nodes)))
    # The nodes learn the finished record through their metadata watch, which a loaded machine can
    # delay past this probe; the record the mover just wrote is the newest there is.
    reported = doc["resharding"]
    if reported is None or reported["updated"] <= final.updated:
        doc["resharding"] = asdict(final)
    return doc


async def ask_supervisor(state: ClusterState, shards: int, timeout: float = REQUEST_TIMEOUT) -> ClusterState:
    """Have the supervisor run nodes for exactly shards 0..shards-1; the state file once it has."""
    request = ShardRequest.new(shards)
    requests.delivered(state, lambda: send_request(state, request), "start or stop its nodes")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    doing = f"laying out nodes for {shards} shards"
    while (current := requests.carried_out(state, request.id, _shard_answer, doing)) is None:
        if loop.time() >= deadline:
            raise LocalError(f"cluster {state.name}'s supervisor did not lay out nodes for {shards} shards "
                             f"within {timeout:.0f}s (log: {Path(state.logs) / 'supervisor.log'})")
        await asyncio.sleep(0.1)
    return current


def _shard_answer(state: ClusterState) -> tuple[str, str]:
    return state.shard_request, state.shard_request_error


def _shards(numbers: list[int]) -> str:
    """shard 2, shards 1, 2."""
    return ("shards " if len(numbers) > 1 else "shard ") + ", ".join(map(str, numbers))


def progress_line(record: ReshardRecord, width: int = 20) -> str:
    """One line of progress: shard counts, phase, a bar of slots moved, keys moved, the ETA."""
    done = record.slots_moved / record.slots_total if record.slots_total else 0.0
    filled = min(width, round(done * width))
    line = (f"{record.from_shards} -> {record.to_shards} shards  {record.phase:<8} "
            f"[{'#' * filled}{'.' * (width - filled)}] {record.slots_moved}/{record.slots_total} slots  "
            f"{record.keys_moved} keys")
    eta = record.eta() if record.phase == "moving" else None
    return line + (f"  ETA {format_duration(eta)}" if eta is not None else "")

