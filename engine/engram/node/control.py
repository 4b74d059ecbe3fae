"""The node's control port: ENGRAM.STATUS, ENGRAM.FAILOVER, ENGRAM.SNAPSHOT, ENGRAM.METRICS for probes,
peers, tools.

Clients talk to Valkey itself on the node's client port; this small RESP server is the node
process's own door, so asking a node what it is never depends on its data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import generate_latest

from engram import ENGINE_VERSION, resp
from engram.journal.entries import format_version
from engram.leadership.switchover import SwitchoverError
from engram.snapshots.record import SnapshotError

log = logging.getLogger(__name__)

StatusSource = Callable[[], dict[str, str]]
Switchover = Callable[[str], Awaitable[None]]
# Takes a snapshot of the node's shard now and says where it landed; SnapshotError when it cannot.
SnapshotNow = Callable[[], Awaitable[str]]


@dataclass
class Session:
    """One control connection's protocol: clients such as redis-py open with HELLO 3."""

    resp3: bool = False


def _hello(args: list[bytes], session: Session) -> bytes:
    """HELLO [2|3]: the protocol switch and a short server description, as Valkey answers."""
    if len(args) > 2:
        return resp.error("ERR the control port takes no AUTH or SETNAME: HELLO [2|3]")
    if len(args) == 2:
        if args[1] not in (b"2", b"3"):
            return resp.error("NOPROTO unsupported protocol version")
        session.resp3 = args[1] == b"3"
    fields = [("server", resp.bulk("engram-node")), ("version", resp.bulk(format_version(ENGINE_VERSION))),
              ("proto", resp.integer(3 if session.resp3 else 2)), ("mode", resp.bulk("control"))]
    return resp.mapping([(resp.bulk(k), v) for k, v in fields], session.resp3)


class ControlServer:
    """Answers the node's control commands, one RESP connection at a time each."""

    def __init__(self, status: StatusSource, switchover: Switchover,
                 snapshot: SnapshotNow | None = None) -> None:
        self._status = status
        self._switchover = switchover
        self._snapshot = snapshot
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Listen on host:port; with ``tls`` (a TLS cluster) TLS only, plain text is not answered."""
        self._server = await asyncio.start_server(self._serve, host, port, ssl=tls, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = resp.RequestParser()
        session = Session()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                for args, _ in parser.parse():
                    writer.write(await self.answer(args, session))
                await writer.drain()
        except resp.ProtocolError as exc:
            writer.write(resp.error(f"ERR {exc}"))
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            # A connection still open when the node's loop ends is closed with the loop gone.
            with contextlib.suppress(RuntimeError):
                writer.close()

    async def answer(self, args: list[bytes], session: Session | None = None) -> bytes:
        """The reply to one control command."""
        session = session or Session()
        name = args[0].lower()
        if name == b"engram.status":
            pairs = [(resp.bulk(k), resp.bulk(v)) for k, v in self._status().items()]
            return resp.mapping(pairs, session.resp3)
        if name == b"hello":
            return _hello(args, session)
        if name == b"engram.metrics":
            # The Prometheus page, for a node that serves no metrics port (a local cluster's).
            return resp.bulk(generate_latest())
        if name == b"engram.failover":
            if len(args) != 2:
                return resp.error("ERR usage: ENGRAM.FAILOVER <target-node-id>")
            try:
                await self._switchover(args[1].decode(errors="replace"))
            except SwitchoverError as exc:
                return resp.error(f"ERR {exc}")
            except Exception as exc:  # a control command must never take the node down
                log.exception("ENGRAM.FAILOVER failed")
                return resp.error(f"ERR switchover failed: {exc}")
            return resp.simple("OK")
        if name == b"engram.snapshot" and self._snapshot is not None:
            if len(args) != 1:
                return resp.error("ERR usage: ENGRAM.SNAPSHOT (takes no arguments)")
            try:
                return resp.bulk(await self._snapshot())
            except SnapshotError as exc:
                return resp.error(f"ERR {exc}")
            except Exception as exc:  # a control command must never take the node down
                log.exception("ENGRAM.SNAPSHOT failed")
                return resp.error(f"ERR snapshot failed: {exc}")
        if name == b"ping":
            return resp.simple("PONG")
        if name == b"client":
            return resp.simple("OK")  # clients announce themselves (CLIENT SETINFO); nothing to keep
        return resp.error(
            f"ERR unknown command '{args[0].decode(errors='replace')}' on the node's control port: "
            "it answers ENGRAM.STATUS, ENGRAM.FAILOVER, ENGRAM.SNAPSHOT and ENGRAM.METRICS; data commands go "
            "to the client port"
        )
