"""The engine node: one per Valkey. Replica by default; primary while it holds the shard's lease."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from engram import ENGINE_VERSION, binaries, metrics
from engram.cluster.metadata import ClusterMetadata
from engram.cluster.protocol import Me
from engram.cluster.push import topology_command
from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord
from engram.journal.client import Appended, Journal
from engram.journal.entries import Entry, EntryType, format_version
from engram.journal.errors import Fenced, IdentityMismatch, JournalError, JournalTimeout, NoQuorum
from engram.journal.placement import leader_move
from engram.leadership.liveness import process_gone
from engram.leadership.on_stop import hand_over_on_stop
from engram.leadership.switchover import hand_over
from engram.leadership.view import LeaderView
from engram.node.certificate import CertificateWatch, ServerCertificate
from engram.node.config import NodeConfig
from engram.node.control import ControlServer
from engram.node.datapath import DataPath
from engram.node.gauges import track_snapshots, watch_journal, watch_module
from engram.node.peer import control_tls
from engram.node.regions import RegionAppliers
from engram.node.snapshotting import NodeSnapshots
from engram.node.tls_front import start_tls_front
from engram.node.users import UserSync
from engram.replication.applier import Applier, ApplyHalted, JournalGap
from engram.replication.committer import Committer
from engram.replication.tap import Tap
from engram.snapshots.record import Position, SnapshotError
from engram.snapshots.restore import open_store, recover
from engram.snapshots.store import SnapshotStore
from engram.tasks import cancel_and_wait
from engram.valkey.connection import ValkeyError
from engram.valkey.process import start_valkey

log = logging.getLogger(__name__)

MONITOR_INTERVAL = 0.02
def _warn_waiting(warned_at: float, what: str, exc: Exception) -> float:
    """Say now and then, not five times a second, that the node waits; returns when it last said so."""
    now = time.monotonic()
    if now - warned_at < TAIL_WARN_EVERY:
        return warned_at
    log.warning("waiting for the %s (%s)", what, exc)
    return now


T = TypeVar("T")


async def _patiently(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Retry attempt while the journal cannot answer (it may be away for long); data of another
    cluster halts the node instead."""
    delay, warned_at = 0.1, -TAIL_WARN_EVERY
    while True:
        try:
            return await attempt()
        except IdentityMismatch as exc:
            raise NodeHalted(str(exc)) from exc
        except JournalError as exc:
            warned_at = _warn_waiting(warned_at, what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


# A campaign whose append went unanswered asks again, with the same id, for this many leases.
CAMPAIGN_RETRY_LEASES = 3
CAMPAIGN_RETRY_PAUSE = 0.1
# How often a primary checks where its stream's leader is, and the least time between two moves
# (each move is a short leader hand-over in the journal: writes pause for tens of milliseconds).
PLACEMENT_EVERY = 1.0
PLACEMENT_SPACING = 5.0
# A replica that found no snapshot to recover from tries again this often.
RECOVERY_RETRY_AFTER = 30.0
# How often a replica whose primary's renewals are late asks whether its process is still there
# (leadership/liveness.py), and how long one probe may take.
LIVENESS_EVERY = 0.1
LIVENESS_TIMEOUT = 0.5
# How often a node refreshes its record in the cluster metadata (and on every role change).
HEARTBEAT_INTERVAL = 10.0
TAIL_WARN_EVERY = 10.0


class NodeHalted(RuntimeError):
    """The node must not go on: it was pointed at a journal or metadata of another cluster."""


class Role(enum.StrEnum):
    STARTING = "starting"
    REPLICA = "replica"
    PROMOTING = "promoting"
    PRIMARY = "primary"


class Node:
    """Owns the local Valkey, the journal connection, and the node's role."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.role = Role.STARTING
        self.leader = LeaderView(config.lease_seconds)
        self.valkey: subprocess.Popen[bytes] | None = None
        self.datapath = DataPath(config.valkey_socket)
        self.journal: Journal | None = None
        self.meta: ClusterMetadata | None = None
        self._tls_front: asyncio.Server | None = None
        # The cluster's certificate on this node's own TLS ports; None on a plain-text cluster.
        self.certificate: ServerCertificate | None = None
        self._background: list[asyncio.Task[None]] = []
        self.control: ControlServer | None = None
        self.applier: Applier | None = None
        # A multi-region node's appliers of the other regions' writes (node/regions.py).
        self.regions: RegionAppliers | None = None
        # The shard's snapshots: the schedule, requests, and the store (None before run() opens it).
        self.snapshotting = NodeSnapshots(
            config, lambda: self.role.value, lambda: self.applier is not None and not self.applier.halted)
        # Valkey must be rebuilt (newest snapshot, then the journal's tail) before applying.
        self._needs_recovery = True
        self.committer: Committer | None = None
        self.tap: Tap | None = None
        self.handing_over = False
        self.lag = 0  # journal entries this replica has still to apply
        self._tasks: list[asyncio.Task[None]] = []
        self._replica_task: asyncio.Task[None] | None = None
        # A hand-off being taken: held here, since the event loop keeps only a weak reference to a
        # task, and one collected while it waits loses the hand-off (the shard then waits out a
        # whole election backoff instead).
        self._handoff_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._last_reack = 0.0
        self._lease_lost_at: float | None = None
        # When this node last became primary, until it first serves (logged once, for failover timing).
        self._promoted_at: float | None = None

    # -- what the node knows ------------------------------------------------------------

    @property
    def shard(self) -> int:
        return self.config.shard

    @property
    def view(self) -> ClusterView:
        assert self.meta is not None
        return self.meta.view

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY

    @property
    def serving(self) -> bool:
        committer = self.committer
        return (
            self.role is Role.PRIMARY
            and not self.handing_over
            and committer is not None
            and committer.fenced is None
            and time.monotonic() < committer.lease_until
        )

    @property
    def leader_address(self) -> str:
        """Where clients of this shard are sent. The metadata's record wins when it names a later epoch
        than the journal has shown this node: a node rebuilding from a snapshot replays old leaders."""
        record = self.view.leaders.get(self.config.shard) if self.meta is not None else None
        if record is not None and record.epoch > self.leader.epoch and record.node != self.config.node_id:
            return record.address
        if self.leader.leader_id == self.config.node_id and self.role is not Role.PRIMARY:
            return ""  # a stale view naming ourselves would send clients in a loop
        return self.leader.leader_address

    def unavailable_reason(self) -> str:
        if self.handing_over:
            return "switchover in progress, retry shortly"
        if self.role is Role.PRIMARY:
            return "primary lease expired or journal unavailable; leadership is being re-established"
        return "the shard has no primary right now (leader election in progress)"

    @property
    def applied_seq(self) -> int:
        if self.role is Role.PRIMARY and self.committer is not None:
            return self.committer.committed_seq
        return self.applier.applied_seq if self.applier else 0

    def status(self) -> dict[str, str]:
        committer = self.committer
        lease_ms = 0
        if self.role is Role.PRIMARY and committer is not None:
            lease_ms = max(0, int((committer.lease_until - time.monotonic()) * 1000))
        return {
            "node_id": self.config.node_id,
            "cluster": self.config.cluster,
            "shard": str(self.config.shard),
            "zone": self.config.zone,
            "role": "primary" if self.role is Role.PRIMARY else (
                "starting" if self.role is Role.STARTING else "replica"),
            "epoch": str(self.leader.epoch),
            "applied_seq": str(self.applied_seq),
            "committed_seq": str(committer.committed_seq if committer else self.applied_seq),
            "leader_id": self.leader.leader_id,
            "leader_address": self.leader.leader_address,
            "lease_ms": str(lease_ms),
            "engine_version": format_version(ENGINE_VERSION),
            "halted": self.applier.halted if self.applier else "",
            "address": self.config.announce,
            "admin": self.config.admin_announce,
            "slots": self._slot_ranges(),
            "lag": str(self.lag if self.role is not Role.PRIMARY else 0),
            # The shard's newest verified snapshot as this node last read it ("" while none).
            "snapshot_seq": str(newest.seq) if (newest := self.snapshotting.newest) else "",
            "snapshot_age": str(max(0, int(time.time() - newest.created_at))) if newest else "",
            "snapshot_failures": str(self.snapshotting.failures),
            "snapshot_error": self.snapshotting.error,
            # The cluster's reshard and its progress (resharding/record.py), "" when none ran.
            "reshard": self.meta.view.reshard if self.meta else "",
        }

    def _slot_ranges(self) -> str:
        slots = self.meta.view.slots if self.meta else None
        if slots is None:
            return ""
        return slots.ranges_text(self.config.shard)

    # -- life cycle --------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        if not cfg.cluster_id:
            raise NodeHalted("the node config has no cluster_id: provisioning assigns one per cluster")
        tls = cfg.tls_files
        self.certificate = ServerCertificate(tls) if tls else None
        metrics.serve(cfg.metrics_port, cfg.host, self.certificate)
        os.makedirs(cfg.data_dir, exist_ok=True)
        # The control port before anything that can wait (Valkey starting, a journal that is away
        # for long): probes and the operator then see a node "starting", not a silent port that a
        # startup probe would restart over and over.
        self.control = ControlServer(self.status, lambda target: self.switchover(target),
                                     self.snapshotting.take)
        await self.control.start(cfg.host, cfg.admin_port,
                                 self.certificate.serving_context() if self.certificate else None)
        if cfg.spawn_valkey:
            self.valkey = await start_valkey(
                cfg.valkey_socket, cfg.data_dir, cfg.valkey_args, cfg.valkey_server,
                port=cfg.port, bind=cfg.host, module=binaries.valkey_module(), region=cfg.region,
                counters=cfg.region_counters, ttls=cfg.region_ttls,
            )
        await self._open_datapath()
        if self.certificate is not None and cfg.tls_port:
            self._tls_front = await start_tls_front(
                cfg.host, cfg.tls_port, self.certificate, cfg.host, cfg.port
            )
        if tls is not None:
            # A renewed certificate is served without a restart, by this node's ports and Valkey's.
            watch = CertificateWatch(tls, self.certificate, self.datapath.execute if cfg.valkey_tls else None)
            self._background.append(asyncio.get_running_loop().create_task(watch.run()))
        # A node always starts empty and rebuilds from the journal: whatever Valkey held was
        # possibly never committed.
        await self.datapath.execute("FLUSHALL", "SYNC")
        self.journal = await self._connect_journal()
        await self.journal.watch_elections()
        self.meta = await self._open_metadata()
        self.snapshotting.store = await self._open_snapshots()
        track_snapshots(lambda: self.snapshotting.newest, cfg.snapshot_policy)
        loop = asyncio.get_running_loop()
        self._background += [
            loop.create_task(watch_journal(self.journal)),
            loop.create_task(watch_module(self.datapath)),
            loop.create_task(self.meta.watch()),
            loop.create_task(self._heartbeat()),
            loop.create_task(self._watch_journal()),
            loop.create_task(self._watch_leader_process()),
            loop.create_task(self.snapshotting.run(self.journal, lambda: self.view)),
            loop.create_task(self._place_stream_leader()),
            loop.create_task(UserSync(self.datapath, self.meta, cfg.users_file).run()),
            # The first journal server given is this node's zone's (orchestration/node_config.py).
            loop.create_task(self.journal.stay_home(cfg.journal_urls[0])),
        ]
        if cfg.linked_regions:
            self.regions = RegionAppliers(self.journal, cfg, lambda: self.serving)
            self._background.append(loop.create_task(self.regions.run()))
        self.applier = Applier(self.journal, cfg.valkey_socket, self._observe, cfg.cluster_id)
        self.leader.last_renewal = time.monotonic()
        if cfg.preferred_primary and await self._shard_is_new():
            # No leader has ever held this shard, so no lease can be running: campaigning early
            # is safe, and it lets the planned primary win.
            self.leader.backoff = cfg.lease_seconds * 0.25
        self._become_replica()
        log.info("node %s serving on %s:%d", cfg.node_id, cfg.host, cfg.port)
        try:
            await self._monitor()
        finally:
            await self.shutdown()

    async def _open_datapath(self) -> None:
        """Reach Valkey (its container may still be starting) and take charge of its module."""
        deadline = time.monotonic() + 60
        while True:
            try:
                await self.datapath.open()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await self.datapath.set_role("replica")
        await self.datapath.set_lease(0.0, "this node is starting", force=True)
        await self.datapath.execute("ENGRAM.COMMITTIMEOUT", max(1, int(self.config.commit_timeout * 1000)))

    async def _connect_journal(self) -> Journal:
        """Open the shard's provisioned stream, waiting while it cannot be found; never create it."""
        cfg = self.config
        journal: Journal | None = None

        async def attempt() -> Journal:
            nonlocal journal
            if journal is None:
                journal = await Journal.connect(
                    cfg.journal_urls, cfg.cluster, cfg.shard, cfg.journal_replicas, name=cfg.node_id,
                    security=cfg.journal_security,
                )
            try:
                await journal.open_stream(cfg.cluster_id)
            except IdentityMismatch:
                await journal.close()
                raise
            return journal

        return await _patiently("journal", attempt)

    async def _shard_is_new(self) -> bool:
        assert self.journal is not None
        try:
            return await self.journal.last_seq() == 1  # the genesis entry alone
        except JournalError:
            return False

    async def _open_metadata(self) -> ClusterMetadata:
        """Open the provisioned cluster metadata, waiting while it cannot be found; never create it."""
        cfg = self.config
        assert self.journal is not None
        journal = self.journal

        async def attempt() -> ClusterMetadata:
            meta = await ClusterMetadata.open(journal.jetstream, cfg.cluster, cfg.cluster_id)
            await meta.load_slot_map()
            return meta

        return await _patiently("cluster metadata", attempt)

    async def _open_snapshots(self) -> SnapshotStore | None:
        """The cluster's snapshot store (None for a cluster made before snapshots), waiting out a
        journal that cannot answer: a node that skipped it would replay from a truncated start."""
        cfg = self.config
        assert self.journal is not None
        journal = self.journal
        return await _patiently("snapshot store", lambda: open_store(journal, cfg.cluster, cfg.cluster_id))

    async def _recover(self) -> None:
        """Rebuild Valkey from the newest usable snapshot and set the applier just after it; with
        no snapshot, empty Valkey and replay from the genesis entry."""
        assert self.journal is not None and self.applier is not None
        reply = await self.datapath.execute("CONFIG", "GET", "dir")
        valkey_dir = reply[1].decode() if isinstance(reply, list) else self.config.data_dir
        position = await recover(self.snapshotting.store, self.journal, self.config.cluster_id, valkey_dir,
                                 self._load_rdb)
        if position is None:
            await self.datapath.execute_now("FLUSHALL", "SYNC")
            await self.datapath.execute_now("FUNCTION", "FLUSH", "SYNC")
            self.applier.reset()
        else:
            self.applier.restore(position)
            self._adopt_leader(position)
            metrics.RESTORES.inc()

    async def _load_rdb(self, path: str) -> None:
        # Libraries already loaded would make the RDB's functions clash, and Valkey exits on that.
        await self.datapath.execute_now("FUNCTION", "FLUSH", "SYNC")
        await self.datapath.execute_now("ENGRAM.LOADRDB", path, timeout=600.0)

    def _adopt_leader(self, position: Position) -> None:
        """The leadership known at the snapshot's entry; the tail updates it as it is applied."""
        if position.epoch >= self.leader.epoch:
            self.leader.epoch = position.epoch
            self.leader.leader_id = position.leader_id
            self.leader.leader_address = position.leader_address
        self.leader.last_renewal = time.monotonic()

    def _record(self) -> NodeRecord:
        cfg = self.config
        role = "primary" if self.role is Role.PRIMARY else "replica"
        return NodeRecord(cfg.node_id, cfg.shard, cfg.zone, cfg.announce, role, self.applied_seq,
                          admin=cfg.admin_announce, admin_tls=self.certificate is not None,
                          # Behind this node's TLS front, Valkey's own port is where MIGRATE gets in.
                          migrate=f"{cfg.host}:{cfg.port}" if cfg.tls_port else "")

    def control_tls(self, peer: NodeRecord) -> ssl.SSLContext | None:
        """How to reach a peer's control port: TLS with the cluster's CA where the peer serves it."""
        # Read each time (peers are asked rarely): a renewed CA file is used at once.
        return control_tls(self.config.tls_ca_file) if peer.admin_tls else None

    async def _heartbeat(self) -> None:
        """Keep this node's record fresh so CLUSTER replies list it; sooner after a role change."""
        assert self.meta is not None
        last_role = None
        last_sent = 0.0
        while True:
            now = time.monotonic()
            if self.role is not last_role or now - last_sent >= HEARTBEAT_INTERVAL:
                try:
                    await self.meta.register(self._record())
                    last_role, last_sent = self.role, now
                except Exception as exc:  # metadata is advisory; never let it stop the node
                    log.info("node record not published: %r", exc)
            await asyncio.sleep(0.2)

    async def _place_stream_leader(self) -> None:
        """While primary, keep the shard's stream leader out of this node's zone (journal/placement.py),
        so that losing the zone costs one election, not an engine failover and a journal one in a row."""
        assert self.journal is not None
        cfg = self.config
        if not cfg.journal_zones:
            return
        last_move = -PLACEMENT_SPACING
        while True:
            await asyncio.sleep(PLACEMENT_EVERY)
            # Only under a running lease: a primary paused past its lease may already be deposed, and
            # moving the leader then would put it in the new primary's zone (seen in chaos: the next
            # zone loss cost both elections, 11 s instead of 3).
            if not self.serving or time.monotonic() - last_move < PLACEMENT_SPACING:
                continue
            try:
                peers = await self.journal.peers(PLACEMENT_EVERY)
                zone = leader_move(cfg.shard, cfg.zone, peers, cfg.journal_zones)
                if zone is None or not self.serving:
                    continue
                last_move = time.monotonic()
                await self.journal.move_leader(zone, PLACEMENT_EVERY)
                metrics.STREAM_LEADER_MOVES.inc()
                log.info("shard %d: stream leader moved out of zone %s to zone %s", cfg.shard, cfg.zone, zone)
            except JournalError as exc:  # placement is an optimisation: the next round tries again
                log.info("stream leader placement skipped: %s", exc)

    async def _watch_journal(self) -> None:
        """Stop a replica's election clock while the journal itself is unreachable.

        Silence from a leader only means something while the journal works: otherwise a replica
        would campaign the moment the journal returned, racing the incumbent's own renewal and
        turning a journal election into an Engram failover as well.
        """
        assert self.journal is not None
        period = self.config.lease_seconds / 2
        was_down = False
        while True:
            await asyncio.sleep(period)
            if self.role is Role.PRIMARY:
                was_down = False
                continue
            down = not await self.journal.has_leader(period)
            if down != was_down:
                log.info("shard %d's stream %s: election clock %s", self.config.shard,
                         "has no leader or did not answer" if down else "answers again",
                         "held" if down else "restarted")
            if down or was_down:
                # Also on its return: the incumbent gets a whole backoff to renew, however late this
                # loop ran on a loaded machine (a probe round can take a whole period).
                self.leader.restart_clock(time.monotonic())
            was_down = down

    async def _watch_leader_process(self) -> None:
        """Find a killed primary without waiting out its lease: once its renewals are late, probe its
        client port; a refused connection lets this replica campaign at once (leadership/liveness.py)."""
        view = self.leader
        while True:
            await asyncio.sleep(LIVENESS_EVERY)
            if (self.role is not Role.REPLICA or not view.leader_address
                    or view.leader_id == self.config.node_id or view.gone_epoch == view.epoch
                    or not view.renewal_late(time.monotonic())):
                continue
            epoch, leader, address = view.epoch, view.leader_id, view.leader_address
            if await process_gone(address, LIVENESS_TIMEOUT) and view.epoch == epoch:
                view.leader_gone(epoch)
                metrics.LEADERS_FOUND_GONE.inc()
                log.warning("primary %s of epoch %d is gone (%s refused a connection): campaigning "
                            "without waiting out its lease", leader, epoch, address)

    async def _publish_leadership(self, epoch: int) -> None:
        assert self.meta is not None
        cfg = self.config
        record = LeaderRecord(cfg.shard, cfg.node_id, cfg.announce, epoch)
        for _ in range(50):
            if self.role is not Role.PRIMARY or self.leader.epoch != epoch:
                return
            try:
                await self.meta.publish_leader(record)
                return
            except Exception as exc:
                log.info("leader record not published yet: %r", exc)
                await asyncio.sleep(0.2)

    async def shutdown(self) -> None:
        if self._stopped.is_set() and self.is_primary:
            # Asked to stop (SIGTERM) while leading: hand the shard over before anything closes.
            await hand_over_on_stop(self)
        for task in self._background:
            task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in (self._replica_task, self._handoff_task):
            if task is not None:
                task.cancel()
        if self.control:
            await self.control.stop()
        if self._tls_front is not None:
            self._tls_front.close()
        if self.tap:
            self.tap.close()
        if self.journal:
            await self.journal.close()
        self.datapath.close()
        if self.valkey and self.valkey.poll() is None:
            self.valkey.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.valkey.wait(5)

    def stop(self) -> None:
        self._stopped.set()

    # -- replica -----------------------------------------------------------------------------

    def _become_replica(self) -> None:
        self.role = Role.REPLICA
        metrics.ROLE.set(0)
        self._replica_task = asyncio.get_running_loop().create_task(self._apply_loop())

    async def _apply_loop(self) -> None:
        assert self.applier is not None
        warned_at, retries = -TAIL_WARN_EVERY, 0
        while True:
            try:
                if self._needs_recovery:
                    await self._recover()
                    self._needs_recovery = False
                    metrics.HALTED.set(0)
                await self.applier.run()
                return  # stopped on purpose: this node is taking a hand-off
            except ApplyHalted:
                metrics.HALTED.set(1)
                return
            except JournalGap as exc:
                # Fell behind a truncation: only a snapshot can bring this node back.
                log.warning("%s; restoring from a snapshot", exc)
                self._needs_recovery = True
            except SnapshotError as exc:
                # Not applying, and saying why; a snapshot taken meanwhile may still bring it back.
                self.applier.halted = str(exc)
                log.error("replica halted: %s; trying again in %gs", exc, RECOVERY_RETRY_AFTER)
                metrics.HALTED.set(1)
                await asyncio.sleep(RECOVERY_RETRY_AFTER)
            except JournalError as exc:
                # The journal can be away for long (a partition): say so now and then, not 5x a second.
                retries += 1
                now = time.monotonic()
                if now - warned_at >= TAIL_WARN_EVERY:
                    log.warning("journal tail interrupted (%s); retrying (%d attempts so far)", exc, retries)
                    warned_at = now
                await asyncio.sleep(0.2)
            except (ConnectionError, OSError) as exc:
                log.error("local valkey unreachable while applying: %s", exc)
                self.stop()
                return

    def _observe(self, entry: Entry) -> bool:
        """Called for every applied entry; False stops the applier (this node takes over)."""
        self.leader.observe(entry, time.monotonic())
        self.lag = entry.pending
        metrics.APPLIED_SEQ.set(entry.seq)
        metrics.REPLICATION_LAG.set(entry.pending)
        metrics.EPOCH.set(self.leader.epoch)
        if (
            entry.type is EntryType.LEADER
            and entry.node == self.config.node_id
            and entry.source != self.config.node_id  # our own campaign, seen again, is no hand-off
            and entry.pending == 0  # entries after it: an old hand-off, replayed while rebuilding
            and self.role is Role.REPLICA
        ):
            self.role = Role.PROMOTING
            self._handoff_task = asyncio.get_running_loop().create_task(self._take_handoff(entry))
            return False
        return True

    async def _take_handoff(self, entry: Entry) -> None:
        assert self.journal is not None
        log.info("shard %d: handed leadership at epoch %d (entry %d) by %s", self.config.shard, entry.epoch,
                 entry.seq, entry.source)
        try:
            last = await self.journal.last_seq()
        except JournalError:
            last = -1
        if last != entry.seq:
            # A stale hand-off replayed from history: leadership moved on since.
            self._become_replica()
            return
        await self._promote(entry.seq, entry.epoch, lease_from=None)
        metrics.FAILOVERS.labels("switchover").inc()

    def _campaign_refusal(self) -> str:
        """Why this node may not campaign now ("" when it may)."""
        assert self.applier is not None and self.meta is not None
        if not self.applier.identity_verified:
            return "it has not applied the stream's genesis entry yet"
        recorded = self.meta.recorded_epoch(self.config.shard)
        if recorded > self.leader.epoch:
            return (f"the metadata records epoch {recorded} for the shard, above the epoch "
                    f"{self.leader.epoch} this node has applied from the journal")
        return ""

    async def _campaign_append(self, entry: Entry, expected: int, msg_id: str) -> Appended:
        """The campaign's conditional append. An unknown outcome (no answer, the journal electing)
        is retried with the same id: a campaign that landed is then recognised as won (the retry is
        fenced by its own entry, see Journal.append), instead of leaving the shard to a leader that
        believes it lost, for another backoff (seen in chaos seed 77)."""
        lease = self.config.lease_seconds
        deadline = time.monotonic() + CAMPAIGN_RETRY_LEASES * lease
        while True:
            try:
                return await self.journal.append_until_elected(entry, expected, msg_id, timeout=lease / 2)
            except (JournalTimeout, NoQuorum) as exc:
                if time.monotonic() + CAMPAIGN_RETRY_PAUSE >= deadline:
                    raise
                log.info("campaign append of epoch %d unanswered (%s); asking again", entry.epoch, exc)
                await asyncio.sleep(CAMPAIGN_RETRY_PAUSE)

    async def _campaign(self) -> None:
        assert self.journal is not None and self.applier is not None
        refusal = self._campaign_refusal()
        if refusal:
            log.info("not campaigning for shard %d: %s", self.config.shard, refusal)
            self.leader.restart_clock(time.monotonic())
            return
        applied = self.applier.applied_seq
        epoch = self.leader.epoch + 1
        silent = time.monotonic() - self.leader.last_renewal
        log.info("campaigning for epoch %d of shard %d: no renewal from %s for %.1fs (%d entries behind)",
                 epoch, self.config.shard, self.leader.leader_id or "any leader", silent, self.lag)
        entry = Entry(EntryType.LEADER, epoch, self.config.node_id, address=self.config.announce)
        sent = time.monotonic()
        # From here the applier must not act on leadership entries: it may see ours before we do.
        self.role = Role.PROMOTING
        try:
            # Never reused: a campaign must not recognise an old entry of its own as this one.
            msg_id = f"{self.config.node_id}.{secrets.token_hex(6)}.campaign.{epoch}"
            landed = await self._campaign_append(entry, applied, msg_id)
            seq = landed.seq
        except JournalError as exc:
            log.info("campaign for epoch %d lost: %s", epoch, exc)
            self.role = Role.REPLICA
            self.leader.restart_clock(time.monotonic())
            return
        if self._replica_task:
            await cancel_and_wait(self._replica_task)
        self.leader.observe(Entry(EntryType.LEADER, epoch, self.config.node_id, address=self.config.announce,
                                  seq=seq), sent)
        log.warning("node %s won leadership of shard %d at epoch %d (seq %d)",
                    self.config.node_id, self.config.shard, epoch, seq)
        await self._promote(seq, epoch, lease_from=sent)
        metrics.FAILOVERS.labels("election").inc()

    # -- primary -----------------------------------------------------------------------------

    async def _promote(self, leader_seq: int, epoch: int, lease_from: float | None) -> None:
        cfg = self.config
        assert self.journal is not None and self.applier is not None
        if self.committer is not None:
            raise RuntimeError("promotion while a committer is running: two taps would ack writes")
        self.leader.epoch = epoch
        self.leader.leader_id = cfg.node_id
        self.leader.leader_address = cfg.announce
        began = time.monotonic()
        tap = Tap(cfg.valkey_socket)
        try:
            await tap.attach()
        except Exception as exc:
            log.error("cannot attach the replication tap: %s", exc)
            tap.close()
            self.stop()
            return
        self.tap = tap
        committer = Committer(
            self.journal, tap, cfg.node_id, epoch, leader_seq, self.applier.checksum,
            cfg.lease_seconds, cfg.max_batch_bytes, cfg.append_window, self._committed,
            address=cfg.announce,
        )
        committer.lease_until = (lease_from + cfg.lease_seconds) if lease_from is not None else 0.0
        committer.renew_now()
        self.committer = committer
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(tap.stream(committer.feed)),
            loop.create_task(committer.run()),
        ]
        # Replies wait for commits from here on; nothing is served before the first lease push.
        await self.datapath.set_role("primary")
        self.role = Role.PRIMARY
        metrics.ROLE.set(1)
        self._background.append(loop.create_task(self._publish_leadership(epoch)))
        self._promoted_at = began
        log.info("shard %d: primary at epoch %d; replication tap attached in %.3fs",
                 cfg.shard, epoch, time.monotonic() - began)

    def _committed(self, seq: int, latency: float) -> None:
        metrics.COMMIT_LATENCY.observe(latency)
        metrics.COMMITTED_SEQ.set(seq)
        metrics.APPLIED_SEQ.set(seq)

    async def demote(self, reason: str) -> None:
        """Stop serving at once, drop what Valkey holds, and rebuild as a replica."""
        if self.role is not Role.PRIMARY:
            return
        log.warning("node %s steps down: %s", self.config.node_id, reason)
        self.role = Role.REPLICA
        metrics.ROLE.set(0)
        assert self.applier is not None
        # Held replies fail (UNKNOWN) and nothing more is served, before the tap goes: its loss
        # would fail them too, with a vaguer reason.
        await self.datapath.step_down(f"this node stopped being primary ({reason})")
        # A deposed primary must not run what its clients have queued or are blocked on: a BLPOP
        # woken by a replicated push would pop on a replica.
        await self.datapath.disconnect_clients()
        if self.committer is not None:
            self.committer.close()
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self.tap:
            self.tap.close()
            self.tap = None
        self.committer = None
        # Executed-but-uncommitted writes must vanish: start again from the newest snapshot and the
        # journal after it (see _recover).
        await self.datapath.execute_now("FLUSHALL", "SYNC")
        await self.datapath.execute_now("FUNCTION", "FLUSH", "SYNC")
        await self.datapath.execute_now("SCRIPT", "FLUSH", "SYNC")
        self.applier.reset()
        self._needs_recovery = True
        self.leader.restart_clock(time.monotonic())
        if self._stopped.is_set():
            # Stopping (a hand-over on SIGTERM): rebuilding would only replay the journal while
            # its Valkey, still answering, sent clients to the old leaders it replays.
            self.role = Role.REPLICA
            return
        self._become_replica()

    async def switchover(self, target: str, timeout: float = 10.0) -> None:
        """Planned hand-over of leadership to a caught-up replica named target."""
        await hand_over(self, target, timeout)

    async def _push_datapath(self) -> None:
        """Bring the module's lease and topology up to date with the node's view."""
        committer = self.committer
        if self.role is Role.PRIMARY and committer is not None and self.serving:
            await self.datapath.set_lease(committer.lease_until, "")
            if self._promoted_at is not None:
                log.info("shard %d: serving clients %.3fs after promotion", self.config.shard,
                         time.monotonic() - self._promoted_at)
                self._promoted_at = None
        else:
            await self.datapath.set_lease(0.0, self.unavailable_reason())
        view = self.view
        key = (view.changes, self.role, self.leader.epoch, self.leader_address)
        if self.datapath.topology_due(key):
            me = Me(self.config.node_id, self.config.shard, self.config.announce, self.leader.epoch)
            await self.datapath.set_topology(
                key, topology_command(view, me, self.leader_address, self.unavailable_reason())
            )

    # -- the watch ---------------------------------------------------------------------------

    async def _monitor(self) -> None:
        while not self._stopped.is_set():
            now = time.monotonic()
            if self.role is Role.PRIMARY and self.committer is not None:
                committer = self.committer
                failed = next((t for t in self._tasks if t.done()), None)
                if committer.fenced is not None:
                    await self.demote(str(committer.fenced))
                elif failed is not None:
                    exc = failed.exception() if not failed.cancelled() else None
                    if isinstance(exc, Fenced):
                        await self.demote(str(exc))
                    else:
                        log.error("replication failed on the primary: %r", exc)
                        await self.demote(f"replication failed: {exc!r}")
                elif now > committer.lease_until and not self.handing_over and committer.lease_until:
                    # Not serving from this instant (see `serving`). Stepping down at once would add
                    # a failover to a journal election, so wait: if the journal confirms leadership
                    # again the node resumes; if it stays silent, another node takes over.
                    if self._lease_lost_at is None:
                        self._lease_lost_at = now
                        log.warning("lease expired: not serving until the journal confirms leadership")
                    elif now - self._lease_lost_at > self.config.commit_timeout:
                        await self.demote(
                            f"lease expired and the journal stayed silent for {self.config.commit_timeout:g}s"
                        )
                    self._lease_lost_at = self._lease_lost_at if self.is_primary else None
                else:
                    if self._lease_lost_at is not None:
                        log.warning("the journal confirmed leadership again: serving")
                        self._lease_lost_at = None
                    if now - self._last_reack > 1.0 and self.tap is not None:
                        self.tap.reack()
                        self._last_reack = now
            elif (
                self.role is Role.REPLICA
                and self.applier is not None
                and not self.applier.halted
                and self.leader.campaign_due(now)
            ):
                await self._campaign()
            if self.valkey is not None and self.valkey.poll() is not None:
                log.error("valkey exited with code %s; the node stops", self.valkey.returncode)
                return
            try:
                await self._push_datapath()
            except ValkeyError as exc:
                # A busy script: the module keeps the last lease it was given, which only runs
                # out, and the push is retried on the next round.
                log.debug("data path push refused: %s", exc)
            except (ConnectionError, OSError) as exc:
                log.error("local valkey unreachable: %s; the node stops", exc)
                return
            try:
                await asyncio.wait_for(self._stopped.wait(), MONITOR_INTERVAL)
            except TimeoutError:
                pass

