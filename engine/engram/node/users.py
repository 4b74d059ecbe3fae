"""The node's side of users as cluster state (engram/cluster/users.py, docs/security.md).

Changes the module recorded are stored in the metadata before their replies are released; the
metadata's users are applied to this node's Valkey whenever they change, and again every
REAPPLY_EVERY, which also undoes a change that could not be stored.
"""

from __future__ import annotations

import asyncio
import logging
import time

from engram import metrics
from engram.cluster.metadata import ClusterMetadata
from engram.node.datapath import DataPath
from engram.valkey.connection import ValkeyError

log = logging.getLogger(__name__)

POLL_EVERY = 0.02
REAPPLY_EVERY = 10.0
RETRY_AFTER = 0.5


class UserSync:
    """Stores this node's user changes and applies the cluster's users, until cancelled."""

    def __init__(self, datapath: DataPath, meta: ClusterMetadata) -> None:
        self.datapath = datapath
        self.meta = meta
        self._applied = -1
        self._applied_at = 0.0

    async def run(self) -> None:
        while True:
            try:
                await self.store_pending()
                await self.apply()
                await asyncio.sleep(POLL_EVERY)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the journal or Valkey away: held replies time out meanwhile
                log.info("users not synchronised yet: %r", exc)
                await asyncio.sleep(RETRY_AFTER)

    async def store_pending(self) -> None:
        """Store every change the module recorded, in order, then release their replies."""
        pending = await self.datapath.execute("ENGRAM.USERS.PENDING")
        if not isinstance(pending, list) or not pending:
            return
        for _seq, name, rules in pending:
            await self.meta.store_user(name.decode(), rules.decode() if rules is not None else None)
            metrics.USER_CHANGES.inc()
        await self.datapath.execute("ENGRAM.USERS.DONE", pending[-1][0])

    async def apply(self) -> None:
        users = self.meta.view.users
        now = time.monotonic()
        if not users.loaded or (users.version == self._applied and now - self._applied_at < REAPPLY_EVERY):
            return
        self._applied, self._applied_at = users.version, now
        try:
            changed = await self.datapath.execute("ENGRAM.USERS.APPLY", *users.apply_args())
        except ValkeyError as exc:  # rules this Valkey refuses (another version?): the rest converged
            log.error("users applied in part: %s", exc)
            return
        if changed:
            log.info("%s users changed to match the cluster's", changed)
