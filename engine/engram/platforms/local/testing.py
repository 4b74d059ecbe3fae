"""Helpers for tests that drive `engram local` (the fixtures themselves live in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from engram.platforms.local import network, processes
from engram.platforms.local.state import STATE_FILE, ClusterState, cluster_dir

T = TypeVar("T")
ENGRAM = [sys.executable, "-m", "engram.cli.main"]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll predicate until it returns something truthy and return that; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # the thing waited for may fail until it is ready
            last_error, value = exc, None
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def run_engram(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180.0
) -> subprocess.CompletedProcess:
    """Run the `engram` CLI in a subprocess, capturing text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*ENGRAM, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )


def status(name: str, directory: str | Path) -> dict[str, Any]:
    """`engram local status NAME --json`, parsed; fails with the CLI's message if it fails."""
    result = run_engram("local", "status", name, "--dir", str(directory), "--json", timeout=30)
    if result.returncode != 0:
        raise AssertionError(f"engram local status {name} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def log_tails(name: str, directory: str | Path, lines: int = 15) -> str:
    """The end of every log of a cluster, for a failing test's report."""
    logs = cluster_dir(directory, name) / "logs"
    if not logs.is_dir():
        return ""
    parts = []
    for log in sorted(logs.glob("*.log")):
        parts.append(f"--- {log.name}\n{processes.tail(log, lines)}")
    return "\n".join(parts)


def force_cleanup(name: str, directory: str | Path) -> list[int]:
    """Kill whatever a cluster left running (supervisor first, then children); return the pids killed."""
    path = cluster_dir(directory, name) / STATE_FILE
    try:
        state = ClusterState.load(path)
    except (FileNotFoundError, ValueError):
        return []
    targets = [(state.supervisor_pid, str(path))]
    targets += [(r.pid, r.config) for r in [*state.nodes, *state.journal]]
    killed = []
    for pid, marker in targets:
        if pid and processes.is_ours(pid, marker):
            processes.signal_pid(pid, signal.SIGKILL)
            killed.append(pid)
    processes.wait_gone(killed, 10.0)
    if state.network is not None:
        network.destroy(state.network)
    path.unlink(missing_ok=True)
    return killed
