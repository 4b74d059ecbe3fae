"""The front door: the client port of a node, speaking RESP and the cluster protocol."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from engram.cluster.slots import key_hash_slot
from engram.cluster.topology import ClusterView
from engram.frontdoor import resp
from engram.frontdoor.commands import CommandTable
from engram.frontdoor.session import Session
from engram.frontdoor.tracking import PendingWrites

log = logging.getLogger(__name__)

_CROSSSLOT = resp.error("CROSSSLOT Keys in request don't hash to the same slot")

LocalHandler = Callable[[Session, list[bytes]], "bytes | Awaitable[bytes]"]


class NodeView(Protocol):
    """What the front door needs to know about its node."""

    @property
    def shard(self) -> int: ...

    @property
    def view(self) -> ClusterView: ...

    @property
    def is_primary(self) -> bool: ...

    @property
    def serving(self) -> bool:
        """Primary with a live lease, not handing over: may execute commands."""
        ...

    @property
    def leader_address(self) -> str: ...

    def unavailable_reason(self) -> str: ...


class FrontDoor:
    """Accepts clients, decides what each command may do on this node, and tracks pending writes."""

    def __init__(
        self, node: NodeView, table: CommandTable, valkey_socket: str, commit_timeout: float
    ) -> None:
        self.node = node
        self.table = table
        self.valkey_socket = valkey_socket
        self.commit_timeout = commit_timeout
        self.pending = PendingWrites()
        self.sessions: set[Session] = set()
        self.local_handlers: dict[bytes, LocalHandler] = {}
        self.wait_command = resp.encode_command([b"WAIT", b"1", str(int(commit_timeout * 1000)).encode()])
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Session(self), host, port, reuse_address=True, backlog=1024
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.close_sessions()

    def close_sessions(self, keep: Session | None = None, reason: str = "") -> None:
        for session in list(self.sessions):
            if session is keep:
                continue
            if reason:
                session.abort(reason)
            else:
                session.close()

    def admission(
        self, session: Session, is_write: bool, keys: list[bytes] | None, args: list[bytes]
    ) -> bytes | None:
        """None when the command may run here, else the error reply that redirects the client."""
        node = self.node
        slot = -1
        if keys:
            slot = key_hash_slot(keys[0])
            for key in keys[1:]:
                if key_hash_slot(key) != slot:
                    return _CROSSSLOT
            owner = node.view.owner(slot)
            if owner != node.shard:
                if owner is None:
                    return resp.error("CLUSTERDOWN the slot map is not known yet")
                address = node.view.leader_address(owner)
                if not address:
                    return resp.error(f"CLUSTERDOWN shard {owner}, owner of slot {slot}, has no primary")
                return resp.error(f"MOVED {slot} {address}")
            if session.in_multi:
                if session.multi_slot < 0:
                    session.multi_slot = slot
                elif session.multi_slot != slot:
                    return _CROSSSLOT
        if node.is_primary:
            if node.serving:
                return None
            return resp.error(f"TRYAGAIN {node.unavailable_reason()}")
        if not keys and not is_write:
            return None  # PING, INFO, CLIENT, HELLO...: node-local and harmless on a replica
        if not is_write and session.readonly:
            return None
        if not keys:
            return resp.error("READONLY You can't write against a read only replica.")
        leader = node.leader_address
        if not leader:
            return resp.error(f"CLUSTERDOWN {node.unavailable_reason()}")
        return resp.error(f"MOVED {slot} {leader}")

    def local_command(self, session: Session, name: bytes, args: list[bytes]) -> bytes | Awaitable[bytes]:
        if name == b"readonly":
            session.readonly = True
            return resp.simple("OK")
        if name == b"readwrite":
            session.readonly = False
            return resp.simple("OK")
        if name == b"asking":
            return resp.simple("OK")
        handler = self.local_handlers.get(name)
        if handler is None:
            return resp.error(f"ERR unknown command '{name.decode(errors='replace')}'")
        try:
            return handler(session, args)
        except Exception as exc:  # an admin command must never take the node down
            log.exception("local command %s failed", name)
            return resp.error(f"ERR {exc}")
