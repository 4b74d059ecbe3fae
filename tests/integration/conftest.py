"""Local Engram clusters for integration tests, started through the public CLI."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_names = itertools.count()


class ClusterFactory:
    """Starts clusters with `engram local up --json` and always takes them down again."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[dict] = []

    def __call__(self, shards: int = 1, replicas: int = 2, lease: float = 2.0, **options: str) -> dict:
        name = f"t{os.getpid()}x{next(_names)}"
        argv = [sys.executable, "-m", "engram.cli.main", "local", "up", name, "--dir", str(self.base),
                "--shards", str(shards), "--replicas", str(replicas), "--lease", str(lease), "--json"]
        for option, value in options.items():
            argv += [f"--{option.replace('_', '-')}", str(value)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            self._kill_leftovers(name)
            raise RuntimeError(f"engram local up failed ({done.returncode}): {done.stderr[-2000:]}")
        status = json.loads(done.stdout)
        self.started.append(status)
        return status

    def close(self) -> None:
        for status in self.started:
            subprocess.run(
                [sys.executable, "-m", "engram.cli.main", "local", "down", status["name"],
                 "--dir", str(self.base)],
                capture_output=True, timeout=120,
            )
            self._kill_leftovers(status["name"])

    def _kill_leftovers(self, name: str) -> None:
        # Belt and braces: a test that failed half-way must not leave servers running.
        state = self.base / name / "state.json"
        if not state.exists():
            return
        data = json.loads(state.read_text())
        pids = [data.get("supervisor_pid")]
        pids += [n.get("pid") for n in data.get("nodes", [])]
        pids += [j.get("pid") for j in data.get("journal", [])]
        for pid in pids:
            if pid:
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(tmp_path_factory.mktemp("engram"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def local_cluster_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(tmp_path_factory.mktemp("engram"))
    yield factory
    factory.close()
