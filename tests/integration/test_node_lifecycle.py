"""A node's start and stop as a platform sees them: the control port answers from the first moment
(issue 13)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from engram.node.config import NodeConfig
from engram.platforms.local import ports
from tests.integration.workload import control_status

pytestmark = pytest.mark.integration


def test_a_node_waiting_for_its_journal_answers_on_its_control_port_as_starting(short_tmp: Path) -> None:
    """A pod started while the journal is away must not crash-loop on its startup probe, which asks
    the control port; its readiness stays false until it has a role."""
    client_port, admin_port, dead_journal = ports.allocate(3)
    config = NodeConfig(
        cluster="lonely",
        node_id="lonely-s0-n0",
        shard=0,
        zone="a",
        port=client_port,
        admin_port=admin_port,
        # Nothing listens here: the node waits for its journal for as long as it takes.
        journal_urls=[f"nats://127.0.0.1:{dead_journal}"],
        data_dir=str(short_tmp / "n0"),
        cluster_id="0" * 32,
        log_level="info",
    )
    path = short_tmp / "node.json"
    config.dump(path)
    log = open(short_tmp / "node.log", "wb")  # closed below, after the process
    argv = [sys.executable, "-m", "engram.node", "--config", str(path)]
    node = subprocess.Popen(argv, stdout=log, stderr=log)
    try:
        answer: dict[str, str] = {}
        deadline = time.monotonic() + 20
        while not answer and time.monotonic() < deadline:
            assert node.poll() is None, (short_tmp / "node.log").read_text()
            try:
                answer = control_status({"admin": f"127.0.0.1:{admin_port}"}, socket_timeout=2)
            except redis.RedisError:
                time.sleep(0.1)
        assert answer.get("role") == "starting", answer
        # Still waiting a while later, still answering.
        time.sleep(2.0)
        assert control_status({"admin": f"127.0.0.1:{admin_port}"})["role"] == "starting"
        probe = subprocess.run(
            [sys.executable, "-m", "engram.node.probe", "--port", str(admin_port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode == 1 and "role is starting" in probe.stderr
    finally:
        # SIGKILL: a node waiting for its journal does not act on SIGTERM (its Valkey dies with it).
        node.kill()
        node.wait(10)
        log.close()
