"""`engram local upgrade` on real local clusters: replicas first, then a switchover, then the old
primary; writers keep being acknowledged, none of their acknowledged writes is lost, and no node on
the old engine is left to halt on the newer engine's journal entries."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engram import binaries
from engram.journal.entries import format_version
from engram.platforms.local.testing import ENGRAM, run_engram, wait_for
from tests.integration.newer_node import NEWER
from tests.integration.workload import Writers, client_for, primary_of

pytestmark = pytest.mark.integration

ClusterFactory = Callable[..., dict[str, Any]]
NEWER_NODE = [sys.executable, str(Path(__file__).with_name("newer_node.py"))]


def _upgrade(doc: dict[str, Any], *options: str) -> subprocess.CompletedProcess:
    result = run_engram("local", "upgrade", doc["name"], "--dir", str(Path(doc["dir"]).parent), *options,
                        timeout=300)
    print(result.stderr)  # the progress lines, shown when a test fails
    return result


def _said(stderr: str, text: str) -> int:
    """The line number of the first progress line holding text."""
    return next(i for i, line in enumerate(stderr.splitlines()) if text in line)


def _children(pid: int) -> list[str]:
    """The command lines of a process's children (a node's valkey-server)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append((entry / "cmdline").read_text().replace("\0", " "))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_a_rolling_upgrade_to_a_newer_engine_loses_no_acknowledged_write(
        local_cluster: ClusterFactory) -> None:
    doc = local_cluster(shards=1, replicas=2)
    old_primary = primary_of(doc)["id"]
    writers = Writers(doc["endpoint"], count=4).start()
    try:
        wait_for(lambda: len(writers.acked) >= 100, 30, "writes acknowledged before the upgrade")
        before = len(writers.acked)
        result = _upgrade(doc, "--node-command", shlex.join(NEWER_NODE), "--json")
        during = len(writers.acked) - before
        wait_for(lambda: len(writers.acked) >= before + during + 100, 30, "writes acknowledged after it")
    finally:
        writers.stop()
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)

    newer = format_version(NEWER)
    assert [(n["id"], n["command"], n["engine_version"], n["halted"]) for n in after["nodes"]] == [
        (n["id"], NEWER_NODE, newer, "") for n in doc["nodes"]]
    primary = primary_of(after)
    assert primary["id"] != old_primary
    # Replicas first, then the switchover, then the old primary, which then follows the new one.
    replicas = [n["id"] for n in doc["nodes"] if n["id"] != old_primary]
    handover = _said(result.stderr, f"handing over from {old_primary} to ")
    assert all(_said(result.stderr, f"replacing {r}") < handover for r in replicas), result.stderr
    assert _said(result.stderr, f"replacing {old_primary}") > handover, result.stderr
    assert {n["role"] for n in after["nodes"] if n["id"] != primary["id"]} == {"replica"}

    assert during > 0, "no write was acknowledged while the cluster was upgraded"
    missing = writers.missing(client_for(primary, socket_timeout=10))
    assert not missing, f"{len(missing)} of {len(writers.acked)} acknowledged writes lost, e.g. {missing[:5]}"

    # The same upgrade again finds nothing left to do (a half-done one would resume here).
    again = _upgrade(doc, "--node-command", shlex.join(NEWER_NODE))
    assert again.returncode == 0 and "already runs" in again.stderr, again.stderr


def _stderr_until(proc: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    """What the process wrote to stderr, read until it holds `marker`."""
    assert proc.stderr is not None
    said, deadline, fd = b"", time.monotonic() + timeout, proc.stderr.fileno()
    while marker.encode() not in said:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {marker!r} within {timeout:.0f}s; it said: {said.decode()}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"it exited before saying {marker!r}; it said: {said.decode()}")
        said += chunk
    return said.decode()


def test_two_shards_get_a_new_valkey_server_replicas_first_and_a_cut_short_upgrade_resumes(
        local_cluster: ClusterFactory, short_tmp: Path) -> None:
    # No rebalancing: it could hand a shard back to its replaced old primary once that is up to date.
    doc = local_cluster(shards=2, replicas=1, no_rebalance=True)
    # The same binary under another path: a different valkey-server as far as the upgrade can tell.
    other = short_tmp / "valkey-server-next"
    other.symlink_to(binaries.find("valkey-server"))
    primaries = {s: primary_of(doc, s)["id"] for s in (0, 1)}

    # A first run is interrupted once it has asked for its first node: a half-done upgrade, which
    # status shows and the same command resumes.
    base = str(Path(doc["dir"]).parent)
    # SIGINT as a terminal sends it. A suite started in the background of a non-interactive shell
    # inherits it ignored, and Python then never raises KeyboardInterrupt: give the command the default.
    first = subprocess.Popen([*ENGRAM, "local", "upgrade", doc["name"], "--dir", base, "--valkey-server",
                              str(other)], stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said = ""
    try:
        # Interrupted as soon as it says so, not when a poll of the state file notices.
        said = _stderr_until(first, f"c0-s0-n1 runs valkey-server {other}", 60)
    finally:
        first.send_signal(signal.SIGINT)
        _, rest = first.communicate(timeout=30)
    cut_short = said + rest.decode()
    print(cut_short)
    assert first.returncode == 1 and "run the same command again to resume" in cut_short, cut_short
    half = run_engram("local", "status", doc["name"], "--dir", base)
    assert "nodes run different versions" in half.stdout, half.stdout
    assert "c0-s0-n1 run" in half.stdout.split("nodes run different versions")[1]

    result = _upgrade(doc, "--valkey-server", str(other), "--json")
    assert result.returncode == 0, result.stderr
    assert "replacing c0-s0-n1" not in result.stderr
    after = json.loads(result.stdout)
    assert {n["valkey_server"] for n in after["nodes"]} == {str(other)}
    assert all(any(str(other) in c for c in _children(n["pid"])) for n in after["nodes"]), after["nodes"]
    both = cut_short + result.stderr
    first_handover = _said(both, "handing over")
    for shard, old in primaries.items():
        assert primary_of(after, shard)["id"] != old
        replica = next(n["id"] for n in doc["nodes"] if n["shard"] == shard and n["id"] != old)
        assert _said(both, f"replacing {replica}") < first_handover, both


def test_upgrade_refuses_what_is_not_a_valkey_server_and_a_cluster_that_is_not_running(
        short_tmp: Path) -> None:
    impostor = short_tmp / "valkey-server"
    impostor.write_text("#!/bin/sh\necho 'not valkey'\n")
    impostor.chmod(0o755)
    refused = run_engram("local", "upgrade", "absent", "--dir", str(short_tmp), "--valkey-server",
                         str(impostor))
    assert refused.returncode == 1 and "not a valkey-server" in refused.stderr, refused.stderr
    unknown = run_engram("local", "upgrade", "absent", "--dir", str(short_tmp), "--valkey-server",
                         binaries.find("valkey-server"))
    assert unknown.returncode == 1 and "cluster absent is not running" in unknown.stderr, unknown.stderr
