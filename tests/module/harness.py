"""Drive a valkey-server that loads engram.so: raw pipelined connections and a tap the test acks."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis

from engram import binaries
from engram.platforms.local import ports
from engram.replication.streamscan import Scan
from engram.replication.tap import Tap
from engram.resp import encode_command
from engram.valkey.process import start_valkey

DEADLINE = 10.0  # seconds any single awaited condition may take on a loaded machine


class Conn:
    """One client connection that sends raw pipelines and reads replies as they arrive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader(notEnoughData=_NOT_YET)
        self.replies: list[Any] = []

    @classmethod
    async def open(cls, socket: str) -> Conn:
        reader, writer = await asyncio.open_unix_connection(socket, limit=1 << 24)
        return cls(reader, writer)

    def send(self, *commands: tuple[Any, ...]) -> None:
        """Write every command in one go: a pipeline."""
        self.writer.write(b"".join(encode_command([_arg(a) for a in c]) for c in commands))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def _drain_parser(self) -> None:
        while True:
            reply = self.parser.gets()
            if reply is _NOT_YET:
                return
            self.replies.append(reply)

    async def read(self, count: int, timeout: float = DEADLINE) -> list[Any]:
        """Wait until `count` replies have arrived; return and consume them."""
        async def fill() -> None:
            while len(self.replies) < count:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise ConnectionError(f"server closed the connection after {len(self.replies)} replies")
                self.parser.feed(data)
                self._drain_parser()

        await asyncio.wait_for(fill(), timeout)
        out, self.replies = self.replies[:count], self.replies[count:]
        return out

    async def read_after(self, command: tuple[Any, ...], count: int = 1) -> list[Any]:
        self.send(command)
        return await self.read(count)

    async def call(self, *args: Any) -> Any:
        self.send(args)
        return (await self.read(1))[0]

    def arrived(self) -> int:
        """Replies that reached this process so far, without waiting."""
        data = self.reader._buffer  # what the transport already received
        if data:
            self.parser.feed(bytes(data))
            data.clear()
        self._drain_parser()
        return len(self.replies)

    def close(self) -> None:
        self.writer.close()


_NOT_YET = object()


def comparable(reply: Any) -> Any:
    """A reply as a value that compares across servers: errors become ("error", text)."""
    if isinstance(reply, hiredis.ReplyError):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [comparable(r) for r in reply]
    return reply


def _arg(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass
class StreamCommand:
    """A command of the replication stream, parsed here for the tests to look at (the tap itself
    only pumps bytes)."""

    args: list[bytes]


@dataclass
class ControlledTap:
    """The node's real replication tap as the only replica; it acknowledges only when told."""

    tap: Tap
    received: int = 0  # where the committer could cut: the scan's last safe place
    commands: list[StreamCommand] = field(default_factory=list)
    acks: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    auto: bool = False
    # The stream is arrays of bulk strings, which hiredis reads as it reads replies.
    _parser: Any = field(default_factory=lambda: hiredis.Reader(notEnoughData=_NOT_YET))

    def _on_chunk(self, data: bytes, scan: Scan) -> None:
        self._parser.feed(data)
        while (args := self._parser.gets()) is not _NOT_YET:
            self.commands.append(StreamCommand(args))
        self.received = scan.safe
        if self.auto:
            self.ack()
        self._changed.set()

    async def wait_for_stream(self, predicate: Callable[[list[StreamCommand]], bool]) -> None:
        """Wait until the replication stream holds what the predicate looks for."""
        async def until() -> None:
            while not predicate(self.commands):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), DEADLINE)

    async def wait_for_command(self, name: bytes, count: int = 1) -> None:
        await self.wait_for_stream(lambda cs: sum(c.args[0].lower() == name.lower() for c in cs) >= count)

    def ack(self) -> None:
        """Acknowledge everything received: the journal committed it."""
        self.acks += 1
        self.tap.ack(self.received)

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        self.tap.close()


@asynccontextmanager
async def attached_tap(socket: str, auto: bool = False) -> AsyncIterator[ControlledTap]:
    tap = Tap(socket)
    start = await tap.attach()
    controlled = ControlledTap(tap, received=start, auto=auto)
    controlled._task = asyncio.get_running_loop().create_task(tap.stream(controlled._on_chunk))
    try:
        yield controlled
    finally:
        controlled.close()


@asynccontextmanager
async def valkey(*extra: str, module: bool = True, checked: bool = False) -> AsyncIterator[str]:
    """A valkey-server on a unix socket in a short temporary directory; yields the socket path.

    checked loads engram-checked.so, built beside engram.so with the module's invariant checks on.
    """
    tmp = Path(tempfile.mkdtemp(prefix="egm-", dir="/tmp"))
    socket = str(tmp / "v.sock")
    loaded = checked_module() if checked else binaries.valkey_module()
    args = ["--loadmodule", loaded, *extra] if module else list(extra)
    try:
        proc: subprocess.Popen[bytes] = await start_valkey(socket, str(tmp), args)
    except BaseException:
        log = tmp / "valkey.log"
        if log.exists():
            print(f"--- valkey.log ---\n{log.read_text(errors='replace')[-60000:]}")
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield socket
    except BaseException:
        # The server's log says why a scenario failed (a crash report, a refused command...).
        print(f"--- valkey.log ---\n{(tmp / 'valkey.log').read_text(errors='replace')[-60000:]}")
        raise
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def checked_module() -> str:
    path = Path(binaries.valkey_module()).with_name("engram-checked.so")
    if not path.is_file():
        raise binaries.BinaryNotFound(f"{path} was not built: run `make -C engine/module`")
    return str(path)


async def settle(socket: str) -> None:
    """One round trip on another connection: the server has finished the event-loop iteration
    in which anything queued before it would have been written."""
    probe = await Conn.open(socket)
    try:
        for _ in range(2):
            assert await probe.call("PING") == b"PONG"
        for _ in range(3):
            await asyncio.sleep(0)
    finally:
        probe.close()


@contextmanager
def free_port() -> Iterator[int]:
    """A loopback port nothing listens on, from the local platform's own allocator."""
    yield ports.allocate(1)[0]


def run(scenario: Callable[[], Any], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))
