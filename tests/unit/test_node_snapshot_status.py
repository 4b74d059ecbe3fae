"""A node reports failed snapshot attempts in ENGRAM.STATUS: how many in a row, and the last reason."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from engram.node import snapshotting
from engram.node.config import NodeConfig
from engram.node.node import Node, Role
from engram.snapshots.record import SnapshotError

CHILD_LOG = (
    "import sys\n"
    "print('2026-01-01 00:00:00,000 snapshot-s0 INFO engram.snapshots: replaying', file=sys.stderr)\n"
    "print('2026-01-01 00:00:01,000 snapshot-s0 ERROR engram.snapshots: snapshot of shard 0 failed: '\n"
    "      'rehearsal digest ab12 differs from the recorded cd34', file=sys.stderr)\n"
    "sys.exit(1)\n"
)


class NoStore:
    """A snapshot store that knows no verified snapshot (all a take reads from it)."""

    async def newest_verified(self, shard: int) -> None:
        return None


def replica() -> Node:
    node = Node(
        NodeConfig(cluster="c", node_id="c-s0-n1", shard=0, zone="a", port=1, journal_urls=[], data_dir="/d")
    )
    node.role = Role.REPLICA
    node.snapshotting.store = NoStore()  # type: ignore[assignment]
    return node


def outcomes(node: Node, monkeypatch: pytest.MonkeyPatch, results: list[tuple[int, str]]) -> None:
    async def child() -> tuple[int, str]:
        return results.pop(0)

    monkeypatch.setattr(node.snapshotting, "_child", child)


def test_a_fresh_node_reports_no_failure() -> None:
    status = replica().status()
    assert (status["snapshot_failures"], status["snapshot_error"]) == ("0", "")


def test_failures_count_up_with_the_last_reason_and_a_success_resets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = replica()
    outcomes(
        node,
        monkeypatch,
        [(1, "snapshot of shard 0 failed: rehearsal digest differs"), (-9, ""), (0, "")],
    )
    with pytest.raises(SnapshotError, match="rehearsal digest differs"):
        asyncio.run(node.snapshotting.take())
    assert node.status()["snapshot_failures"] == "1"
    assert node.status()["snapshot_error"] == "snapshot of shard 0 failed: rehearsal digest differs"
    # Killed without a word (out of memory, say): the exit code and where to look instead.
    with pytest.raises(SnapshotError):
        asyncio.run(node.snapshotting.take())
    assert node.status()["snapshot_failures"] == "2"
    assert node.status()["snapshot_error"] == "snapshot of shard 0 failed (exit -9); see the log of c-s0-n1"
    assert asyncio.run(node.snapshotting.take()) == "shard 0: snapshot at entry 0 verified"
    assert (node.status()["snapshot_failures"], node.status()["snapshot_error"]) == ("0", "")


def test_a_refusal_on_the_primary_is_not_a_failed_attempt() -> None:
    node = replica()
    node.role = Role.PRIMARY
    with pytest.raises(SnapshotError, match="never by the primary"):
        asyncio.run(node.snapshotting.take())
    assert node.status()["snapshot_failures"] == "0"


def test_the_reason_is_the_childs_last_error_line_and_its_log_still_reaches_the_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = asyncio.create_subprocess_exec

    async def fake_child(*_: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        return await real(sys.executable, "-c", CHILD_LOG, **kwargs)

    monkeypatch.setattr(snapshotting.asyncio, "create_subprocess_exec", fake_child)
    code, said = asyncio.run(replica().snapshotting._child())
    assert code == 1
    assert said == "snapshot of shard 0 failed: rehearsal digest ab12 differs from the recorded cd34"
    forwarded = capsys.readouterr().err
    assert "INFO engram.snapshots: replaying" in forwarded and "ERROR engram.snapshots" in forwarded
