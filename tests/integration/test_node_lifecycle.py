"""A node's start and stop as a platform sees them: the control port answers from the first moment,
and a primary asked to stop hands its shard over before it exits (issue 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from engram.node.config import NodeConfig
from engram.platforms.local import ports
from tests.integration.workload import Writers, cli_status, client_for, control_status, primary_of

pytestmark = pytest.mark.integration

# Long enough that a failover by election (a replica waits 1.25-1.5 leases of silence) is easy to
# tell from a hand-over, which moves leadership in well under one lease.
LEASE = 8.0


def test_sigterm_on_the_primary_hands_the_shard_over_before_it_exits(local_cluster) -> None:
    """A deleted or evicted pod's primary gets SIGTERM: the shard must change leader in a planned
    way, at once, not after the lease and an election; and no acknowledged write is lost."""
    status = local_cluster(shards=1, replicas=2, lease=LEASE)
    nodes = cli_status(status)["nodes"]
    old = primary_of({"nodes": nodes})
    others = [n for n in nodes if n["id"] != old["id"]]
    epoch = int(control_status(old)["epoch"])
    writers = Writers(status["endpoint"], count=6).start()
    time.sleep(1.5)

    writers.mark("sigterm")
    signalled = time.monotonic()
    os.kill(old["pid"], signal.SIGTERM)
    new = None
    # Straight to the other nodes' control ports: a status command per poll is slow on a busy host.
    while new is None and time.monotonic() - signalled < LEASE:
        for node in others:
            try:
                if control_status(node, socket_timeout=1)["role"] == "primary":
                    new = node
            except redis.RedisError:
                continue
        time.sleep(0.05)
    took = time.monotonic() - signalled
    time.sleep(1.0)
    writers.stop()

    assert new is not None, f"no other node led the shard within one lease ({LEASE}s) of the SIGTERM"
    fields = control_status(new)
    # One epoch on: the hand-off entry the old primary wrote, not a campaign after its silence.
    assert int(fields["epoch"]) == epoch + 1 and fields["leader_id"] == new["id"]
    assert took < LEASE
    log = Path(old["log"]).read_text(errors="replace")
    assert f"handed shard 0 to {new['id']} before stopping" in log, log[-2000:]
    assert "sigterm" in writers.first_ack_after, "no write was acknowledged after the hand-over"
    assert writers.first_ack_after["sigterm"] < LEASE
    assert len(writers.acked) > 100
    assert writers.missing(client_for(new)) == []


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
