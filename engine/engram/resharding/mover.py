"""Moves the keys of slots in motion from their source primary to their targets with MIGRATE.

Durability rests on the module (engine/module/migration.c): MIGRATE's reply waits until the
source's journal holds the keys' deletion, the target's RESTORE reply until its journal holds the
keys. After a failed MIGRATE or a failover the source freezes its moving slots; a full pass that
migrates every key still there again (REPLACE overwrites any copy a failed attempt left on the
target) and then ENGRAM.MIGRATION SETTLE lifts the freeze (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from engram.cluster.slots import key_hash_slot
from engram.cluster.topology import SlotMap

log = logging.getLogger(__name__)


@dataclass
class MoveOptions:
    """How hard the mover pushes: keys per MIGRATE, per SCAN step, per second."""

    batch_keys: int = 100
    scan_count: int = 1000
    max_keys_per_second: int = 20_000
    # Longer than a healthy commit, shorter than a journal election: a MIGRATE that waits this
    # long fails, freezes the slots and is repaired, rather than blocking the source for long.
    migrate_timeout_ms: int = 5000
    username: str = ""
    password: str = ""
    # The CA of the nodes' client certificates on a cluster that serves clients over TLS: the mover
    # then speaks TLS to their announced addresses and verifies them with it. Empty: plain TCP.
    tls_ca_file: str = ""


class MoveFailed(RuntimeError):
    """A MIGRATE or a connection failed; the caller looks up the primaries again and retries."""


class NotReady(RuntimeError):
    """A primary has not taken the slot map in motion yet."""


@dataclass
class Moved:
    keys: int = 0
    bytes: int = 0


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def connect(address: str, options: MoveOptions) -> aioredis.Redis:
    """A connection to a node's announced client address, over TLS when the cluster serves it."""
    host, port = split_address(address)
    tls: dict[str, object] = {}
    if options.tls_ca_file:
        # Verified by name as any client would: the certificate covers every announced address.
        tls = {"ssl": True, "ssl_ca_certs": options.tls_ca_file, "ssl_check_hostname": True}
    return aioredis.Redis(
        host=host, port=port, username=options.username or None, password=options.password or None,
        socket_timeout=options.migrate_timeout_ms / 1000 + 10, socket_connect_timeout=5, **tls,
    )


async def engram_info(conn: aioredis.Redis) -> dict[str, str]:
    text = await conn.execute_command("ENGRAM.INFO")
    if isinstance(text, bytes):
        text = text.decode()
    return dict(line.split(":", 1) for line in str(text).split("\r\n") if ":" in line)


async def wait_for_epoch(conn: aioredis.Redis, epoch: int, what: str,
                         timeout: float = 30.0) -> dict[str, str]:
    """Wait until the primary's module holds this slot map (or a later one)."""
    deadline = time.monotonic() + timeout
    while True:
        info = await engram_info(conn)
        if int(info.get("slot_map_epoch", "0")) >= epoch and info.get("active") == "1":
            return info
        if time.monotonic() > deadline:
            have = info.get("slot_map_epoch")
            raise NotReady(f"{what} has not taken slot map epoch {epoch} (it has {have})")
        await asyncio.sleep(0.05)


class SourceMover:
    """Drains one source primary's moving slots into their targets."""

    def __init__(self, source: aioredis.Redis, slots: SlotMap, source_shard: int,
                 targets: dict[int, str], options: MoveOptions, on_moved: Callable[[Moved], None]) -> None:
        self.source = source
        self.slots = slots
        self.targets = targets  # target shard -> where the source's MIGRATE reaches its primary
        self.options = options
        self.on_moved = on_moved
        self.target_of = {
            slot: target
            for first, last, target in slots.moving
            for slot in range(first, last + 1)
            if slots.owner(slot) == source_shard
        }
        self._window_start = time.monotonic()
        self._window_keys = 0

    async def drain(self) -> None:
        """Pass over the source until a pass finds no key left in the moving slots."""
        while True:
            info = await wait_for_epoch(self.source, self.slots.epoch, "the source primary")
            frozen = info.get("migration_frozen") == "1"
            found = await self._pass()
            if frozen:
                # Every key still here was migrated again: no stale copy is left on a target.
                await self._command("ENGRAM.MIGRATION", "SETTLE", self.slots.epoch)
                log.info("moving slots settled at epoch %d", self.slots.epoch)
                continue
            if not found:
                return

    async def _pass(self) -> int:
        found, cursor = 0, 0
        while True:
            cursor, keys = await self._command("SCAN", cursor, "COUNT", self.options.scan_count)
            cursor = int(cursor)
            groups: dict[int, list[bytes]] = {}
            for key in keys:
                target = self.target_of.get(key_hash_slot(key))
                if target is not None:
                    groups.setdefault(target, []).append(key)
            for target, batch in groups.items():
                for i in range(0, len(batch), self.options.batch_keys):
                    found += await self._migrate(target, batch[i : i + self.options.batch_keys])
            if cursor == 0:
                return found

    async def _migrate(self, target: int, keys: list[bytes]) -> int:
        address = self.targets.get(target)
        if not address:
            raise MoveFailed(f"shard {target} has no primary to move keys to")
        host, port = split_address(address)
        size = await self._sizes(keys)
        auth: list[str] = []
        if self.options.password:
            auth = (["AUTH2", self.options.username, self.options.password] if self.options.username
                    else ["AUTH", self.options.password])
        reply = await self._command(
            "MIGRATE", host, port, "", 0, self.options.migrate_timeout_ms, "REPLACE", *auth, "KEYS", *keys,
        )
        if reply in (b"NOKEY", "NOKEY"):
            return 0
        self.on_moved(Moved(len(keys), size))
        await self._throttle(len(keys))
        return len(keys)

    async def _sizes(self, keys: list[bytes]) -> int:
        """The keys' memory, for the progress report; a key that cannot be sized counts nothing."""
        pipe = self.source.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
        try:
            sizes = await pipe.execute(raise_on_error=False)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise MoveFailed(f"the source primary stopped answering: {exc}") from exc
        return sum(s for s in sizes if isinstance(s, int))

    async def _throttle(self, keys: int) -> None:
        limit = self.options.max_keys_per_second
        if limit <= 0:
            return
        self._window_keys += keys
        ahead = self._window_keys / limit - (time.monotonic() - self._window_start)
        if ahead > 0:
            await asyncio.sleep(ahead)
        if time.monotonic() - self._window_start > 5:
            self._window_start, self._window_keys = time.monotonic(), 0

    async def _command(self, *args: object) -> object:
        try:
            return await self.source.execute_command(*args)
        except redis.exceptions.ResponseError as exc:
            raise MoveFailed(f"{args[0]} on the source primary: {exc}") from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            raise MoveFailed(f"the source primary stopped answering: {exc}") from exc
