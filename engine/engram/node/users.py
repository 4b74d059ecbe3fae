"""The node's side of users as cluster state (engram/cluster/users.py, docs/security.md).

Changes the module recorded are stored in the metadata before their replies are released; the
metadata's users, and the users declared in the node's users file (which win), are applied to
this node's Valkey whenever either changes, and again every REAPPLY_EVERY, which also undoes a
change that could not be stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from engram import metrics
from engram.cluster.metadata import ClusterMetadata
from engram.cluster.users import UsersFileError, parse_users
from engram.node.datapath import DataPath
from engram.valkey.connection import ValkeyError

log = logging.getLogger(__name__)

POLL_EVERY = 0.02
REAPPLY_EVERY = 10.0
RETRY_AFTER = 0.5


class UserSync:
    """Stores this node's user changes and applies the cluster's users, until cancelled."""

    def __init__(self, datapath: DataPath, meta: ClusterMetadata, users_file: str = "") -> None:
        self.datapath = datapath
        self.meta = meta
        self.users_file = users_file
        self.declared: dict[str, str] = {}
        self._declared_stamp: tuple[int, int] | None = None
        self._declared_pushed = False
        self._applied = -1
        self._applied_at = 0.0

    async def run(self) -> None:
        while True:
            try:
                self.read_declared()
                if not self._declared_pushed:
                    await self.datapath.execute("ENGRAM.USERS.DECLARE", *sorted(self.declared))
                    self._declared_pushed, self._applied = True, -1
                await self.store_pending()
                await self.apply()
                await asyncio.sleep(POLL_EVERY)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the journal or Valkey away: held replies time out meanwhile
                log.info("users not synchronised yet: %r", exc)
                await asyncio.sleep(RETRY_AFTER)

    def read_declared(self) -> None:
        """Read the users file again when it changed (a Kubernetes Secret is updated in place)."""
        if not self.users_file:
            return
        try:
            info = os.stat(self.users_file)
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp == self._declared_stamp:
                return
            with open(self.users_file, encoding="utf-8") as f:
                declared = parse_users(f.read(), self.users_file)
        except (OSError, UsersFileError, UnicodeDecodeError) as exc:
            # Keep what was declared before: dropping the declared users would lock their clients out.
            if self._declared_stamp != (-1, -1):
                log.error("users file not applied, keeping the users declared before: %s", exc)
                self._declared_stamp = (-1, -1)
            return
        self._declared_stamp = stamp
        if declared != self.declared:
            self.declared, self._declared_pushed = declared, False

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
        version = users.version
        try:
            changed = await self.datapath.execute("ENGRAM.USERS.APPLY", *users.apply_args(self.declared))
        except ValkeyError as exc:  # rules this Valkey refuses (another version?): the rest converged
            log.error("users applied in part: %s", exc)
            changed = 0
        # Only once Valkey answered: a connection lost on the way is tried again on the next round.
        self._applied, self._applied_at = version, now
        if changed:
            log.info("%s users changed to match the cluster's", changed)
