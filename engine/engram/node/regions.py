"""A multi-region node's part in linking regions (docs/multi-region.md, "Applying"): while it is its
shard's primary, one applier per linked region brings that region's writes in; otherwise none runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from engram import metrics
from engram.journal.client import Journal
from engram.journal.errors import JournalError
from engram.multiregion.applier import InboundApplier, PositionStore, applier_stuck
from engram.multiregion.inbound import InboundLink, ensure_inbound, source_stalled, source_state_of
from engram.multiregion.lww import Stamp, frontier
from engram.node.config import NodeConfig
from engram.tasks import cancel_and_wait
from engram.valkey.connection import ValkeyConnection, ValkeyError

log = logging.getLogger(__name__)

CHECK_EVERY = 0.5
# A primary stamps its clock into its journal this often (ENGRAM.MR.CLOCK), so other regions'
# frontiers move while it takes no writes; and forgets the tombstones behind its own frontier.
CLOCK_EVERY = 1.0
COLLECT_EVERY = 5.0
# An applier that stopped on an error (a gap, a refused write, the journal away) starts again no
# sooner than this, so a lasting fault costs a log line now and then, not a busy loop.
RESTART_AFTER = 5.0


def links(config: NodeConfig) -> list[InboundLink]:
    """The inbound streams this node's shard applies: one per linked region."""
    return [InboundLink(config.cluster, config.shard, region, cluster, config.region)
            for region, cluster in sorted(config.linked_regions.items())]


class RegionAppliers:
    """Runs an InboundApplier per linked region while `is_primary()`; stops them when it is not."""

    def __init__(self, journal: Journal, config: NodeConfig, is_primary: Callable[[], bool]) -> None:
        self.journal = journal
        self.config = config
        self.is_primary = is_primary
        self.appliers: dict[str, InboundApplier] = {}
        self.errors: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopped_at: dict[str, float] = {}
        self._positions: PositionStore | None = None
        self._valkey: ValkeyConnection | None = None
        self._clocked = 0.0
        self._restarted: dict[str, float] = {}
        self._watched_since: dict[str, float] = {}
        # Per region: the applier's inbound position when last seen to move, and when.
        self._progress: dict[str, tuple[int, float]] = {}
        self._collected = time.monotonic()
        self.frontier: Stamp | None = None

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(CHECK_EVERY)
                if not self.is_primary():
                    await self._stop_all()
                    continue
                try:
                    await self._start_missing()
                    await self._measure()
                    await self._clock_and_collect()
                except JournalError as exc:
                    log.info("region appliers not started yet: %s", exc)
                except (ValkeyError, OSError) as exc:  # Valkey restarting, or this node stepping down
                    log.info("region clock not stamped: %s", exc)
                    self._close_valkey()
        finally:
            await self._stop_all()

    async def _clock_and_collect(self) -> None:
        now = time.monotonic()
        if now - self._clocked < CLOCK_EVERY:
            return
        self._clocked = now
        if self._valkey is None:
            self._valkey = await ValkeyConnection.open(self.config.valkey_socket)
        clock = await self._valkey.execute("ENGRAM.MR.CLOCK")
        own = Stamp(int(clock), self.config.region)  # type: ignore[arg-type]
        # Recorded clocks, not applied ones: what was applied after them is re-applied after a
        # failover, and its stamps must still be here then.
        applied = {region: self.appliers[region].recorded_hlc if region in self.appliers else 0
                   for region in self.config.linked_regions}
        self.frontier = frontier(own, applied)
        if self.frontier is None or now - self._collected < COLLECT_EVERY:
            return
        self._collected = now
        gone = await self._valkey.execute("ENGRAM.MR.COLLECT", self.frontier.hlc, self.frontier.region)
        metrics.REGION_TOMBSTONES_COLLECTED.inc(int(gone))  # type: ignore[arg-type]

    def _close_valkey(self) -> None:
        if self._valkey is not None:
            self._valkey.close()
            self._valkey = None

    async def _start_missing(self) -> None:
        js, cfg = self.journal.jetstream, self.config
        if self._positions is None:
            try:
                self._positions = await PositionStore.open(js, cfg.cluster, cfg.journal_replicas)
            except Exception as exc:
                raise JournalError(f"applier positions bucket unavailable: {exc!r}") from exc
        now = time.monotonic()
        for link in links(self.config):
            task = self._tasks.get(link.source_region)
            if task is not None and not task.done():
                continue
            if task is not None:
                self._note_stop(link, task)
            if now - self._stopped_at.get(link.source_region, -RESTART_AFTER) < RESTART_AFTER:
                continue
            # Exported at 0 from the start: an alert on its increase then sees the first stop too.
            metrics.REGION_APPLIER_STOPS.labels(link.source_region)
            applier = InboundApplier(js, link, self.config.valkey_socket, self._positions,
                                     self.journal.jetstream_in(link.source_region))
            self.appliers[link.source_region] = applier
            self._tasks[link.source_region] = asyncio.get_running_loop().create_task(self._apply(applier))

    async def _apply(self, applier: InboundApplier) -> None:
        await ensure_inbound(self.journal.jetstream, applier.link, self.config.journal_replicas)
        log.info("shard %d: applying region %s's writes from %s", self.config.shard,
                 applier.link.source_region, applier.link.stream)
        await applier.run()

    def _note_stop(self, link: InboundLink, task: asyncio.Task[None]) -> None:
        region = link.source_region
        self._tasks.pop(region)
        self._stopped_at[region] = time.monotonic()
        if task.cancelled():
            return
        error = task.exception()
        self.errors[region] = str(error) if error else "stopped"
        metrics.REGION_APPLIER_STOPS.labels(region).inc()
        log.warning("shard %d: applying region %s's writes stopped: %s", self.config.shard, region,
                    self.errors[region])

    async def _measure(self) -> None:
        for region, applier in self.appliers.items():
            metrics.REGION_APPLIED.labels(region).set(applier.last_origin_seq)
            try:
                info = await self.journal.jetstream.stream_info(applier.link.stream)
                state = source_state_of(info, applier.link)
            except Exception as exc:  # a metric: the next round measures again
                log.debug("region %s lag not measured: %r", region, exc)
                continue
            unapplied = max(0, (info.state.last_seq or 0) - applier.position.inbound_seq + 1)
            metrics.REGION_PENDING.labels(region).set(state.lag + unapplied)
            await self._restart_if_stalled(applier.link, state.idle)
            self._restart_if_stuck(region, applier, unapplied)

    def _restart_if_stuck(self, region: str, applier: InboundApplier, unapplied: int) -> None:
        """Cancel an applier that applies nothing though entries wait; _start_missing starts it again."""
        now, at = time.monotonic(), applier.position.inbound_seq
        seen = self._progress.get(region)
        if seen is None or seen[0] != at or unapplied == 0:
            self._progress[region] = (at, now)
            return
        if not applier_stuck(unapplied, now - seen[1]):
            return
        self._progress.pop(region)
        task = self._tasks.get(region)
        if task is not None and not task.done():
            task.cancel()
        metrics.REGION_APPLIER_STOPS.labels(region).inc()
        log.warning("shard %d: applying region %s's writes made no progress for %.0fs with %d entries "
                    "waiting; restarting it from its recorded position", self.config.shard, region,
                    now - seen[1], unapplied)

    async def _restart_if_stalled(self, link: InboundLink, idle: float) -> None:
        """Move the inbound stream's leader when its source is stalled though its region answers."""
        region, now = link.source_region, time.monotonic()
        # No contact yet reads as endless idleness: count it from when this primary began watching.
        idle = min(idle, now - self._watched_since.setdefault(region, now))
        since = now - self._restarted.get(region, -float("inf"))
        if not source_stalled(idle, True, since):
            return  # no need to ask the other region
        try:
            await self.journal.jetstream_in(region).stream_info(link.source_stream)
            answers = True
        except Exception:  # the other region is away: NATS will set the source up when it is back
            answers = False
        if not source_stalled(idle, answers, since):
            return
        self._restarted[region] = now
        try:
            await self.journal.step_down(link.stream, timeout=2.0)
        except JournalError as exc:
            log.info("shard %d: could not restart the copy from region %s: %s", self.config.shard, region,
                     exc)
            return
        metrics.REGION_SOURCE_RESTARTS.labels(region).inc()
        log.warning("shard %d: the copy from region %s was silent for %.0fs while that region answers; "
                    "restarted it by moving %s's leader", self.config.shard, region, idle, link.stream)

    async def _stop_all(self) -> None:
        self._close_valkey()
        self._watched_since.clear()
        self._progress.clear()
        for region in self.appliers:
            # A replica applies no other region: its last figures as a primary would mislead.
            for gauge in (metrics.REGION_APPLIED, metrics.REGION_PENDING):
                with contextlib.suppress(KeyError):
                    gauge.remove(region)
        self.frontier = None
        await cancel_and_wait(*self._tasks.values())
        self._tasks.clear()
        self.appliers.clear()
