"""The local endpoint's routing: which node a new connection goes to, from what the nodes last said,
and a status poll in which a silent node (a zone cut off) holds back nobody else's news."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engram.platforms.local import plan, probe, supervisor
from engram.platforms.local.state import ClusterState, NodeState
from engram.platforms.local.supervisor import Supervisor, relay_order


def _state(tmp_path: Path) -> ClusterState:
    state = plan.plan(plan.ClusterSpec(name="demo", shards=2, replicas=2), tmp_path / "demo",
                      "nats-server", "valkey-server")
    Path(state.dir).mkdir(parents=True, exist_ok=True)
    state.save()
    return state


def _said(role: str, epoch: int = 1, halted: str = "") -> dict[str, str]:
    return {"role": role, "epoch": str(epoch), "halted": halted}


def _ids(nodes: list[NodeState]) -> list[str]:
    return [n.id for n in nodes]


def test_shard_0s_primary_comes_first_then_its_replicas_then_other_shards_then_the_silent(
        tmp_path: Path) -> None:
    nodes = _state(tmp_path).nodes
    status = {"demo-s0-n0": None, "demo-s0-n1": _said("replica"), "demo-s0-n2": _said("primary"),
              "demo-s1-n0": _said("primary"), "demo-s1-n1": _said("replica")}
    assert _ids(relay_order(nodes, status)) == [
        "demo-s0-n2", "demo-s0-n1", "demo-s1-n0", "demo-s1-n1", "demo-s0-n0", "demo-s1-n2"]


def test_of_two_nodes_saying_primary_the_newer_epoch_wins_and_a_halted_one_is_no_primary(
        tmp_path: Path) -> None:
    nodes = _state(tmp_path).nodes
    # The deposed primary has not heard yet: it still says primary, at its old epoch.
    status = {"demo-s0-n0": _said("primary", 4), "demo-s0-n1": _said("primary", 5),
              "demo-s0-n2": _said("replica", 5)}
    assert _ids(relay_order(nodes, status))[:3] == ["demo-s0-n1", "demo-s0-n0", "demo-s0-n2"]
    status["demo-s0-n1"] = _said("primary", 5, halted="checksum mismatch")
    assert _ids(relay_order(nodes, status))[0] == "demo-s0-n0"


def test_a_node_that_does_not_answer_holds_back_no_news_of_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(tmp_path)
    silent = "demo-s0-n0"
    promoted = asyncio.Event()

    async def fetch_status(port: int, timeout: float, host: str, ca_file: str = "") -> dict[str, str] | None:
        node = next(n for n in state.nodes if probe.control_address(n).port == port)
        if node.id == silent:  # cut off: the request hangs until it times out
            await asyncio.sleep(timeout)
            return None
        if node.id == "demo-s0-n1" and promoted.is_set():
            return _said("primary", 2)
        return _said("replica")

    monkeypatch.setattr(probe, "fetch_status", fetch_status)
    monkeypatch.setattr(supervisor, "POLL_STATUS", 0.02)
    monkeypatch.setattr(supervisor, "STATUS_STALE", 0.2)
    monkeypatch.setattr(supervisor, "STATUS_TIMEOUT", 30.0)

    async def scenario() -> tuple[float, dict[str, str] | None, str]:
        sup = Supervisor(state.path)
        sup.status[silent] = _said("primary", 1)  # what it said before its zone was cut off
        poller = asyncio.ensure_future(sup._poll_status())
        try:
            await _until(lambda: sup.status.get(silent) is None, 10.0)
            promoted.set()
            began = time.monotonic()
            await _until(lambda: sup.state.endpoint_node == "demo-s0-n1", 10.0)
            return time.monotonic() - began, sup.status.get(silent), sup.state.endpoint_node
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)

    took, silent_status, routed = asyncio.run(scenario())
    # The silent node's request is still out (it would take 30 s): the new primary was seen anyway.
    assert silent_status is None and routed == "demo-s0-n1" and took < 5.0


async def _until(condition: Callable[[], bool], deadline: float) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)
