"""A private Valkey in which a snapshot is built or rehearsed, away from every serving node."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

from engram import binaries
from engram.valkey.connection import ValkeyConnection
from engram.valkey.process import start_valkey

RDB_FILE = "snapshot.rdb"
# Loading a large snapshot at start-up takes a while (Valkey answers -LOADING meanwhile).
START_TIMEOUT = 300.0


class ScratchValkey:
    """Valkey on a unix socket in `directory`, started from `directory/snapshot.rdb` when present.

    `frozen`: started as the replica of a master that is never there, so that loading keeps keys
    whose time has passed and nothing expires afterwards: a rehearsal then holds exactly the keys
    its RDB holds, whenever it runs, and its digest can be compared with the one recorded.
    """

    def __init__(self, directory: str, *, frozen: bool = False) -> None:
        self.directory = Path(directory)
        self.socket = str(self.directory / "valkey.sock")
        self.frozen = frozen
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: ValkeyConnection | None = None

    @property
    def rdb_path(self) -> Path:
        return self.directory / RDB_FILE

    async def start(self) -> None:
        extra = ["--dbfilename", RDB_FILE, "--enable-debug-command", "local"]
        if self.frozen:
            # Port 1 on loopback: nothing listens there, so the link never comes up.
            extra += ["--replicaof", "127.0.0.1", "1"]
        # The module loads in a frozen one too: a region's snapshot holds its stamps in the module's
        # RDB aux field, which Valkey cannot load without it.
        self._proc = await start_valkey(self.socket, str(self.directory), extra,
                                        module=binaries.valkey_module(), timeout=START_TIMEOUT)
        self._conn = await ValkeyConnection.open(self.socket)
        # The node's applier connection is exempt from the module; so is this one.
        await self._conn.execute("ENGRAM.INTERNAL")

    @property
    def conn(self) -> ValkeyConnection:
        assert self._conn is not None, "scratch valkey not started"
        return self._conn

    async def freeze(self) -> None:
        """Stop active expiry: between the digest and the save no key may go."""
        await self.conn.execute("DEBUG", "SET-ACTIVE-EXPIRE", "0")

    async def digest(self) -> str:
        reply = await self.conn.execute("DEBUG", "DIGEST")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def keys(self) -> int:
        return int(await self.conn.execute("DBSIZE"))  # type: ignore[arg-type]

    async def version(self) -> str:
        info = await self.conn.execute("INFO", "server")
        text = info.decode() if isinstance(info, bytes) else str(info)
        for line in text.splitlines():
            if line.startswith(("valkey_version:", "redis_version:")):
                return line.split(":", 1)[1].strip()
        return "unknown"

    async def save(self) -> Path:
        await self.conn.execute("SAVE")
        return self.rdb_path

    async def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 10)
