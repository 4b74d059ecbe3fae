"""A node's part in its shard's snapshots (docs/snapshots.md): the schedule's check, and taking one in a
child process when this node is the shard's snapshot taker or an operator asks it to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Callable

from engram import metrics
from engram.cluster.topology import ClusterView
from engram.journal.client import Journal
from engram.journal.errors import JournalError
from engram.journal.security import journal_security_args
from engram.lifetime import dies_with_this_process
from engram.node.config import NodeConfig
from engram.snapshots.record import SnapshotError, SnapshotRecord
from engram.snapshots.regions import region_args
from engram.snapshots.schedule import snapshot_due, snapshot_taker
from engram.snapshots.store import SnapshotStore

log = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0
RETRY_AFTER = 30.0
STATUS_INTERVAL = 15.0


class NodeSnapshots:
    """Scheduled and requested snapshots of one node's shard, and what ENGRAM.STATUS says of them."""

    def __init__(self, config: NodeConfig, role: Callable[[], str], applying: Callable[[], bool]) -> None:
        self.config = config
        # role(): the node's role now; applying(): its replica applier runs and has not halted.
        self._role = role
        self._applying = applying
        self.store: SnapshotStore | None = None
        self.newest: SnapshotRecord | None = None
        # One snapshot at a time per node, whoever asked for it.
        self._lock = asyncio.Lock()
        # Failed attempts in a row on this node and the last one's reason (ENGRAM.STATUS): a failure
        # must be visible to the operator, not only in this node's log.
        self.failures = 0
        self.error = ""

    async def run(self, journal: Journal, view: Callable[[], ClusterView]) -> None:
        """On the shard's snapshot taker (a replica, see snapshot_taker), take a snapshot when one is
        due, in a child process: the node's own loop never replays or holds a second dataset."""
        cfg = self.config
        policy = cfg.snapshot_policy
        if self.store is None:
            return
        started = time.time()
        checked = 0.0
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            now_view = view()
            leader = now_view.leaders.get(cfg.shard)
            taker = snapshot_taker(cfg.shard, now_view.live_nodes(cfg.shard), leader.node if leader else "")
            is_taker = (policy.enabled and taker == cfg.node_id and self._role() == "replica"
                        and self._applying())
            # Every node says how old its shard's newest snapshot is (ENGRAM.STATUS), less often.
            if not is_taker and time.monotonic() - checked < STATUS_INTERVAL:
                continue
            checked = time.monotonic()
            if not is_taker:
                with contextlib.suppress(JournalError):
                    self.newest = await self.store.newest_verified(cfg.shard)
                continue
            try:
                newest = await self.store.newest_verified(cfg.shard)
                last = await journal.last_seq()
            except JournalError as exc:
                log.info("snapshot check skipped: %s", exc)
                continue
            self.newest = newest
            reason = snapshot_due(policy, newest, last, time.time(), started)
            if not reason or self._lock.locked():
                continue
            log.info("taking a snapshot of shard %d: %s", cfg.shard, reason)
            try:
                await self.take()
            except SnapshotError as exc:
                log.warning("%s; retrying in %gs", exc, RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)

    async def take(self) -> str:
        """Take, verify and store a snapshot of this node's shard now (ENGRAM.SNAPSHOT, the schedule)."""
        cfg = self.config
        if self.store is None:
            raise SnapshotError(f"cluster {cfg.cluster} has no snapshot store (provisioned before snapshots)")
        if (role := self._role()) != "replica":
            raise SnapshotError(f"{cfg.node_id} is {role}: snapshots are taken by replicas, never "
                                "by the primary; ask a replica of the shard")
        async with self._lock:
            code, said = await self._child()
        metrics.SNAPSHOTS.labels("ok" if code == 0 else "failed").inc()
        if code != 0:
            self.failures += 1
            self.error = said or (f"snapshot of shard {cfg.shard} failed (exit {code}); "
                                  f"see the log of {cfg.node_id}")
            raise SnapshotError(self.error)
        self.failures, self.error = 0, ""
        try:
            self.newest = await self.store.newest_verified(cfg.shard)
        except JournalError as exc:
            log.info("newest snapshot not read back: %s", exc)
        seq = self.newest.seq if self.newest else 0
        return f"shard {cfg.shard}: snapshot at entry {seq} verified"

    async def _child(self) -> tuple[int, str]:
        """Run one snapshot cycle in a child: its exit code, and the message of its last ERROR log line
        (why it failed). Its log is passed on to the node's stderr, as when it inherited that."""
        cfg = self.config
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engram.snapshots", "--journal", ",".join(cfg.journal_urls),
            "--cluster", cfg.cluster, "--cluster-id", cfg.cluster_id, "--shard", str(cfg.shard),
            "--keep", str(cfg.snapshot_keep), "--workdir", cfg.data_dir, "--log-level", cfg.log_level,
            *journal_security_args(cfg.journal_user, cfg.journal_password_file, cfg.journal_ca_file),
            *region_args(cfg.region, cfg.linked_regions),
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, limit=1 << 20,
            # A node killed outright takes its snapshot with it, as a container takes its processes.
            preexec_fn=dies_with_this_process(),
        )
        said = ""
        try:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                sys.stderr.write(line := raw.decode(errors="replace"))
                if " ERROR " in line:  # "<time> snapshot-s0 ERROR <logger>: <message>"
                    said = line.split(" ERROR ", 1)[1].split(": ", 1)[-1].strip()
            return await proc.wait(), said
        finally:
            if proc.returncode is None:  # the node is stopping: so does its snapshot
                proc.kill()
                await proc.wait()
