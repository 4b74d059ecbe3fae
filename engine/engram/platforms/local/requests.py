"""Asking a running supervisor for a change of nodes: only it writes state.json and starts nodes.

The command leaves a JSON request in the cluster's directory and sends SIGUSR1; the supervisor takes
it (removing the file, so it is carried out once) and records the request's id in state.json when
done. `engram local scale` (shard_nodes.py) and `engram local upgrade` (node_requests.py) ask this
way, one at a time per cluster (`exclusive`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from engram.platforms.local import processes
from engram.platforms.local.cluster import LocalError, SupervisorGone
from engram.platforms.local.state import ClusterState, replace_file

T = TypeVar("T")

LOCK_FILE = "scale.lock"


def send(state: ClusterState, filename: str, payload: dict[str, Any]) -> None:
    """Leave the request where the supervisor looks and wake it; ProcessLookupError when it is gone."""
    replace_file(Path(state.dir) / filename, json.dumps(payload))
    if state.supervisor_pid:
        os.kill(state.supervisor_pid, signal.SIGUSR1)


def delivered(state: ClusterState, send: Callable[[], None], cannot: str) -> None:
    """Run ``send`` (a module's send_request); SupervisorGone saying what ``cannot`` be done without it."""
    try:
        send()
    except ProcessLookupError:
        raise SupervisorGone(f"cluster {state.name}'s supervisor (pid {state.supervisor_pid}) is gone; "
                             f"nothing can {cannot}") from None


def carried_out(state: ClusterState, request_id: str, answered: Callable[[ClusterState], tuple[str, str]],
                doing: str) -> ClusterState | None:
    """The state once the supervisor has carried out ``request_id``, None while it has not.

    ``answered`` gives a state's (id of the last request done, its error). LocalError with the
    supervisor's refusal; SupervisorGone when it exited while ``doing`` the request."""
    log = Path(state.logs) / "supervisor.log"
    with contextlib.suppress(FileNotFoundError, ValueError):
        current = ClusterState.load(state.path)
        done, error = answered(current)
        if done == request_id:
            if error:
                raise LocalError(f"{error} (log: {log})")
            return current
    if not processes.is_ours(state.supervisor_pid, str(state.path)):
        raise SupervisorGone(f"cluster {state.name}'s supervisor (pid {state.supervisor_pid}) exited "
                             f"while {doing} (log: {log})")
    return None


def take(state: ClusterState, filename: str, kind: str, parse: Callable[[dict[str, Any]], T]) -> T | None:
    """The waiting request, removed so it is carried out once; None when there is none.

    ValueError naming the file when it is not a `kind` (it is removed all the same)."""
    path = Path(state.dir) / filename
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        return parse(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a {kind} ({exc}): {text[:200]!r}") from None


@contextlib.contextmanager
def exclusive(state: ClusterState) -> Iterator[None]:
    """One change of a cluster's nodes at a time (a scale or an upgrade): LocalError when one runs."""
    with open(Path(state.dir) / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LocalError(f"another `engram local scale` or `upgrade` of {state.name} is running; wait "
                             "for it (`engram local status` shows its progress)") from None
        yield
