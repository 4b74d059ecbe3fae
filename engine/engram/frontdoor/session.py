"""One client connection: forwards commands to its own Valkey connection and holds replies
until the writes they depend on are committed to the journal.

Each client gets a dedicated upstream connection, so MULTI/WATCH, blocking commands, pub/sub,
CLIENT state and SELECT keep their Valkey semantics. After the writes of a pipelined chunk the
session injects `WAIT 1 <timeout>`; Valkey answers it once the replication tap acknowledges the
offset, which the tap does only after the journal committed it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from engram.frontdoor import resp
from engram.frontdoor.tracking import WriteGroup

if TYPE_CHECKING:
    from engram.frontdoor.server import FrontDoor

log = logging.getLogger(__name__)

_FWD, _WAIT, _LOCAL = 0, 1, 2
# Error code for a command that may have run but whose commit is not confirmed. Not TRYAGAIN:
# cluster clients retry TRYAGAIN on their own, which would apply an INCR or RPUSH twice.
UNKNOWN_OUTCOME = "UNKNOWN"
_PUBSUB_COMMANDS = frozenset(
    (b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe", b"ssubscribe", b"sunsubscribe")
)
_PUBSUB_REPLIES = _PUBSUB_COMMANDS | {b"message", b"pmessage", b"smessage"}
_UNSUBSCRIBE_REPLIES = frozenset((b"unsubscribe", b"punsubscribe", b"sunsubscribe"))
# Scripts and functions may write keys they did not declare; readers wait for them conservatively.
_SCRIPT_COMMANDS = frozenset((b"eval", b"evalsha", b"fcall"))
_LOCAL_COMMANDS = frozenset((b"cluster", b"readonly", b"readwrite", b"asking"))


class _Item:
    """A reply on its way to the client, released in order once its gates open."""

    __slots__ = ("data", "gates", "group")

    def __init__(self, data: bytes | None, group: WriteGroup | None = None) -> None:
        self.data = data
        self.group = group
        self.gates = 0


class Session(asyncio.Protocol):
    """The client side of one connection."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.parser = resp.RequestParser()
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self._up_buffer: list[bytes] = []
        self._up_connecting = False
        # Expected upstream replies, in order: (kind, item, meta).
        self.expect: deque[tuple[int, _Item | None, object]] = deque()
        self.out: deque[_Item] = deque()
        self.group: WriteGroup | None = None
        self.resp3 = False
        self.readonly = False
        self.in_multi = False
        self.multi_keys: list[bytes] | None = []
        self.multi_writes = False
        self.multi_slot = -1
        # A command refused inside MULTI dooms the transaction, as in Valkey (EXECABORT).
        self.multi_aborted = False
        self.pubsub = False
        self.monitor = False
        self.closed = False
        self.peer = ""

    # -- client side -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.door.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.door.sessions.discard(self)
        # Keep the upstream open until our own WAITs answer, so readers of our keys are not
        # released early; nothing else needs it.
        if self.upstream is not None and not any(kind == _WAIT for kind, _, _ in self.expect):
            self.upstream.close()

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        try:
            commands = self.parser.parse()
        except resp.ProtocolError as exc:
            self._local(resp.error(f"ERR {exc}"))
            self._flush_upstream()
            self._release()
            if self.transport is not None:
                self.transport.close()
            return
        door = self.door
        for args, raw in commands:
            self._command(door, args, raw)
        if self.group is not None and not self.in_multi:
            self._close_group()
        self._flush_upstream()
        self._release()

    def _command(self, door: FrontDoor, args: list[bytes], raw: bytes) -> None:
        name = args[0].lower()
        if name.startswith(b"engram.") or name in _LOCAL_COMMANDS:
            self._local(door.local_command(self, name, args))
            return
        if self.monitor:
            self._local(resp.error("ERR only QUIT and RESET are accepted by Engram after MONITOR"))
            return
        spec = door.table.lookup(args)
        if spec is None:
            self._forward(raw, None, None)  # Valkey gives its own unknown-command error
            return
        flags = spec.flags
        is_write = spec.is_write or (name in _SCRIPT_COMMANDS)
        keys = door.table.keys(spec, args)
        refusal = door.admission(self, is_write, keys, args)
        if refusal is not None:
            if self.in_multi:
                self.multi_aborted = True
            self._local(refusal)
            return
        if name in _PUBSUB_COMMANDS:
            self._pubsub_command(spec, args, raw)
            return
        if name == b"hello" and len(args) > 1:
            self.resp3 = args[1] == b"3" or (self.resp3 and args[1] != b"2")
        elif name == b"reset":
            self.resp3 = self.readonly = self.in_multi = self.pubsub = self.multi_aborted = False
            self.multi_keys, self.multi_writes = [], False
        elif name == b"client" and len(args) > 2 and args[1].lower() == b"reply":
            if args[2].lower() != b"on":
                self._local(resp.error("ERR CLIENT REPLY OFF|SKIP is not supported by Engram's front door"))
                return
        elif name == b"monitor":
            self.monitor = True
        elif name == b"multi":
            if not self.in_multi:
                self.in_multi, self.multi_keys, self.multi_writes = True, [], False
                self.multi_slot, self.multi_aborted = -1, False
        elif name in (b"exec", b"discard"):
            if self.in_multi:
                self.in_multi = False
                if name == b"exec" and self.multi_aborted:
                    self._forward(_DISCARD, _EXECABORT, None)
                    return
                if name == b"exec" and self.multi_writes:
                    self._join_group(self.multi_keys)
                    self._forward(raw, None, self.group)
                    return
        elif self.in_multi:
            if is_write:
                self.multi_writes = True
                if keys is None or name in _SCRIPT_COMMANDS or self.multi_keys is None:
                    self.multi_keys = None
                else:
                    self.multi_keys.extend(keys)
            self._forward(raw, None, None)
            return
        if is_write:
            if "blocking" in flags:
                # A blocking write has not executed when sent; its keys are tracked when it
                # answers, so readers do not wait for a pop that may never happen.
                self._join_group(())
                self._forward(raw, keys if name not in _SCRIPT_COMMANDS else None, self.group)
            else:
                self._join_group(None if name in _SCRIPT_COMMANDS else keys)
                self._forward(raw, None, self.group)
            return
        self._forward(raw, keys if keys is not None else _UNKNOWN, None)

    def _pubsub_command(self, spec: object, args: list[bytes], raw: bytes) -> None:
        if self.in_multi:
            self._local(resp.error("ERR pub/sub commands inside MULTI are not supported by Engram"))
            return
        if args[0].lower() in (b"subscribe", b"psubscribe", b"ssubscribe") and len(args) < 2:
            name = args[0].decode(errors="replace").lower()
            self._local(resp.error(f"ERR wrong number of arguments for '{name}' command"))
            return
        # Confirmations arrive as pub/sub replies, which are passed through in arrival order.
        self.pubsub = True
        self._send_upstream(raw)

    def _join_group(self, keys: object) -> None:
        if self.group is None:
            self.group = WriteGroup()
        self.door.pending.register(self.group, keys)  # type: ignore[arg-type]

    def _close_group(self) -> None:
        group = self.group
        self.group = None
        assert group is not None
        self._send_upstream(self.door.wait_command)
        self.expect.append((_WAIT, None, group))

    def _forward(self, raw: bytes, read_keys: object, group: WriteGroup | None) -> None:
        item = _Item(None, group)
        if group is not None:
            item.gates += 1
            group.on_done(lambda: self._ungate(item, group))
        self.out.append(item)
        self.expect.append((_FWD, item, read_keys))
        self._send_upstream(raw)

    def _local(self, reply: bytes | Awaitable[bytes]) -> None:
        if isinstance(reply, bytes):
            item = _Item(reply)
        else:
            item = _Item(None)
            asyncio.get_running_loop().create_task(self._complete(item, reply))
        self.out.append(item)
        if self.expect:
            self.expect.append((_LOCAL, item, None))

    async def _complete(self, item: _Item, reply: Awaitable[bytes]) -> None:
        try:
            item.data = await reply
        except Exception as exc:
            log.exception("local command failed")
            item.data = resp.error(f"ERR {exc}")
        self._release()

    # -- upstream ----------------------------------------------------------------------------

    def _send_upstream(self, raw: bytes) -> None:
        self._up_buffer.append(raw)

    def _flush_upstream(self) -> None:
        if not self._up_buffer:
            return
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(b"".join(self._up_buffer))
            self._up_buffer.clear()
        elif not self._up_connecting:
            self._up_connecting = True
            asyncio.get_running_loop().create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_unix_connection(lambda: _Upstream(self), self.door.valkey_socket)
        except OSError as exc:
            log.warning("cannot reach local valkey: %s", exc)
            if self.transport is not None:
                self.transport.write(resp.error("CLUSTERDOWN the node's Valkey is not reachable"))
                self.transport.close()
            return
        self.upstream = upstream
        self._up_connecting = False
        if self.closed and not self.expect:
            upstream.close()
            return
        self._flush_upstream()

    def upstream_replies(self, replies: list[bytes]) -> None:
        expect = self.expect
        door = self.door
        for raw in replies:
            kind0 = raw[0]
            if kind0 == 62 or (self.pubsub and kind0 == 42 and self._floating_pubsub(raw)) or self.monitor:
                self._float(raw)
                continue
            if not expect:
                self._float(raw)
                continue
            kind, item, meta = expect.popleft()
            if kind == _FWD:
                assert item is not None
                item.data = raw
                if isinstance(meta, bytes):
                    item.data = meta  # a reply we substitute (EXECABORT after a refused command)
                elif item.group is None:
                    if meta is not None and door.pending:
                        self._gate_read(item, None if meta is _UNKNOWN else meta)  # type: ignore[arg-type]
                elif isinstance(meta, list) and meta:
                    # A blocking write that has now executed: its keys are pending from here on.
                    door.pending.register(item.group, meta)
            elif kind == _WAIT:
                group: WriteGroup = meta  # type: ignore[assignment]
                if raw.startswith(b":") and raw[1:2] != b"0":
                    door.pending.resolve(group, True)
                else:
                    self._commit_timed_out(group)
            while expect and expect[0][0] == _LOCAL:
                expect.popleft()
        self._release()
        if self.closed and not expect and self.upstream is not None:
            self.upstream.close()

    def _commit_timed_out(self, group: WriteGroup) -> None:
        # The writes ran in memory but the journal did not confirm them in time: their clients get
        # an error (outcome unknown) and other readers keep waiting, since they may still commit.
        message = resp.error(
            f"{UNKNOWN_OUTCOME} write not committed to the journal within {self.door.commit_timeout:g}s "
            "(journal unavailable?); the outcome of this command is unknown"
        )
        for item in self.out:
            if item.group is group and item.gates:
                item.data = message
                item.group = None
                item.gates = 0
        if not self.closed:
            self._send_upstream(self.door.wait_command)
            self.expect.append((_WAIT, None, group))
            self._flush_upstream()

    def _floating_pubsub(self, raw: bytes) -> bool:
        kind = resp.first_element(raw)
        if kind is None:
            return False
        kind = kind.lower()
        if kind not in _PUBSUB_REPLIES:
            return False
        if kind in _UNSUBSCRIBE_REPLIES and raw.endswith(b":0\r\n"):
            self.pubsub = False
        return True

    def _float(self, raw: bytes) -> None:
        """An unsolicited reply (push, pub/sub message): delivered after what came before it."""
        item = _Item(raw)
        # Before the first reply that has not arrived yet, since this was produced before it.
        pending_index = None
        for index, queued in enumerate(self.out):
            if queued.data is None:
                pending_index = index
                break
        if pending_index is None:
            self.out.append(item)
        else:
            self.out.insert(pending_index, item)

    def _gate_read(self, item: _Item, keys: list[bytes] | None) -> None:
        blocking = self.door.pending.blocking(keys)
        for group in blocking:
            if not group.done:
                item.gates += 1
                group.on_done(lambda g=group: self._ungate(item, g))

    def _ungate(self, item: _Item, group: WriteGroup) -> None:
        if not group.committed:
            # The write will never commit (the node stepped down): nothing it touched may be shown.
            self.close()
            return
        if item.gates:
            item.gates -= 1
            if not item.gates and self.out and self.out[0] is item:
                self._release()

    def _release(self) -> None:
        out = self.out
        if not out or self.transport is None:
            return
        chunks = []
        while out:
            item = out[0]
            if item.data is None or item.gates:
                break
            out.popleft()
            chunks.append(item.data)
        if chunks and not self.closed:
            self.transport.write(b"".join(chunks))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def abort(self, reason: str) -> None:
        """Answer every reply still held with an error naming reason, then hang up."""
        message = resp.error(f"{UNKNOWN_OUTCOME} {reason}; the outcome of this command is unknown")
        for item in self.out:
            if item.data is None or item.gates:
                item.data = message
                item.gates = 0
                item.group = None
        self._release()
        self.close()


_UNKNOWN = object()
_DISCARD = resp.encode_command([b"DISCARD"])
_EXECABORT = resp.error("EXECABORT Transaction discarded because of previous errors.")


class _Upstream(asyncio.Protocol):
    """The session's private connection to Valkey."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.scanner = resp.ReplyScanner()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.scanner.feed(data)
        replies = self.scanner.replies()
        if replies:
            self.session.upstream_replies(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        session = self.session
        # Our WAITs will never answer: the node is going down or stepping down.
        for kind, _, meta in session.expect:
            if kind == _WAIT:
                session.door.pending.resolve(meta, False)  # type: ignore[arg-type]
        if not session.closed and session.transport is not None:
            session.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
