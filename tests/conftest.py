"""Shared fixtures: a JetStream journal cluster and local Engram clusters, cleaned up even on failure.

Helpers for test bodies (wait_for, status, run_engram) live in engram.platforms.local.testing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engram.platforms.local import ports
from engram.platforms.local.journal import LocalJournal
from engram.platforms.local.testing import force_cleanup, log_tails, run_engram, status, wait_for

__all__ = ["status", "wait_for"]


def pytest_configure(config: pytest.Config) -> None:
    """Give each parallel test worker ports of its own: two workers' clusters, each choosing free
    ports before its servers bind them, could otherwise choose the same one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or count < 1 or os.environ.get(ports.RANGE_VARIABLE):
        return
    index = int(worker[2:])
    width = (ports.ephemeral_range()[0] - ports.LOWEST) // count
    low = ports.LOWEST + index * width
    os.environ[ports.RANGE_VARIABLE] = f"{low}-{low + width - 1}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Remember each phase's outcome on the test item, so fixtures can print logs for failed tests."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: Valkey's unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="eg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nats_journal(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[LocalJournal]:
    """A 3-server JetStream cluster on loopback, one server per zone a, b, c.

    `.urls`, `.servers`, `.kill(zone)`, `.restart(zone)`, `.wait_ready()`.
    """
    journal = LocalJournal(short_tmp / "journal")
    try:
        journal.start()
        yield journal
    finally:
        if _failed(request):
            for server in journal.servers:
                print(f"--- {server.target} log:\n{Path(server.log).read_text(errors='replace')[-3000:]}")
        journal.stop()


ClusterFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def local_cluster(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """Factory: `local_cluster(shards=1, replicas=2, lease=2.0, **options)` runs `engram local up --json`
    in a temporary --dir and returns its status dict; every cluster is brought down afterwards.

    Other keyword options become `up` flags (zones="a,b", node_command=FAKE_NODE_COMMAND, netns=True).
    """
    base = short_tmp / "clusters"
    started: list[str] = []

    def start(shards: int = 1, replicas: int = 2, lease: float = 2.0, **options: Any) -> dict[str, Any]:
        name = f"c{len(started)}"
        argv = ["local", "up", name, "--dir", str(base), "--json"]
        argv += ["--shards", str(shards), "--replicas", str(replicas), "--lease", str(lease)]
        for option, value in options.items():
            flag = f"--{option.replace('_', '-')}"
            argv += [flag] if value is True else [flag, str(value)]
        started.append(name)
        result = run_engram(*argv, timeout=240)
        if result.returncode != 0:
            pytest.fail(f"engram local up {name} failed (exit {result.returncode}):\n{result.stderr}")
        return json.loads(result.stdout)

    yield start

    failed = _failed(request)
    for name in started:
        if failed:
            print(f"=== logs of cluster {name}\n{log_tails(name, base)}")
        result = run_engram("local", "down", name, "--dir", str(base), timeout=90)
        killed = force_cleanup(name, base)
        if killed:
            print(f"`engram local down {name}` (exit {result.returncode}) left {killed}: {result.stderr}")
