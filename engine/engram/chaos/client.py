"""A chaos client's connection: one command at a time, each answer classified ok / fail / unknown.

It follows failovers the way a cluster client does: MOVED teaches it where a slot lives; a timeout,
a cut connection or a refusal sends it back to the cluster endpoint, which fronts a live primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import Any

import hiredis

from engram.chaos.history import Outcome
from engram.cluster.slots import key_hash_slot

# Refusals sent before the command ran: the operation definitely did not happen.
_REFUSALS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS")
# Words by which a server says the command may have run: Engram answers a write that executed but
# whose commit it cannot confirm with "UNKNOWN ...; the outcome of this command is unknown".
# Such an answer must never count as a refusal, whatever its code.
_UNKNOWN_PHRASES = ("unknown", "not committed")


@dataclass(frozen=True)
class Answer:
    """What one command came back with."""

    outcome: Outcome
    value: Any = None
    error: str = ""
    # A word for counting: connect, timeout, disconnected, or the error reply's code (MOVED, ...).
    category: str = ""
    # Set when the server redirected us: the address now owning the key's slot.
    moved_to: str = ""


def classify_error(message: str) -> Outcome:
    """fail for a refusal before execution, unknown for anything that may have run."""
    lowered = message.lower()
    if any(phrase in lowered for phrase in _UNKNOWN_PHRASES):
        return Outcome.UNKNOWN
    if message.split(" ", 1)[0].upper() in _REFUSALS:
        return Outcome.FAIL
    # Any other error (ERR ...) is not a documented refusal: assume it may have taken effect.
    return Outcome.UNKNOWN


def expected_error(message: str) -> bool:
    """Whether an error reply is one a cluster gives while leadership moves (a refusal above, or a
    write whose outcome is unknown), rather than a refusal of the command itself (ERR ...)."""
    lowered = message.lower()
    return message.split(" ", 1)[0].upper() in _REFUSALS or any(p in lowered for p in _UNKNOWN_PHRASES)


def _encode(args: tuple[bytes, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


# The cluster's clients speak TLS (engram local up --tls): the runner sets it for its run.
CLIENT_TLS: ssl.SSLContext | None = None


def use_client_tls(ca_file: str | None) -> None:
    """Clients of this run trust the cluster's CA over TLS, or speak plain text (None)."""
    global CLIENT_TLS
    CLIENT_TLS = ssl.create_default_context(cafile=ca_file) if ca_file else None


class _Connection:
    """A RESP2 connection with at most one request in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    async def request(self, args: tuple[bytes, ...], asking: bool = False) -> Any:
        """One command's reply; asking: preceded by ASKING, whose +OK is read and dropped."""
        self.writer.write((_encode((b"ASKING",)) if asking else b"") + _encode(args))
        await self.writer.drain()
        if asking:
            await self._reply()
        return await self._reply()

    async def _reply(self) -> Any:
        while (reply := self.parser.gets()) is False:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.parser.feed(data)
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class RoutedClient:
    """Sends single-key commands to the node that owns the key, learning owners as a cluster client
    does: a MOVED answer triggers a CLUSTER SLOTS refresh from the node it names."""

    def __init__(self, endpoint: str, timeout: float = 5.0, connect_timeout: float = 1.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.routes: dict[int, str] = {}
        self.conns: dict[str, _Connection] = {}
        self.redirects = 0
        self._refresh_from = ""

    async def call(self, key: bytes, *args: bytes) -> Answer:
        """Run one command about `key`; never raises for server or network trouble."""
        if self._refresh_from:
            await self._refresh_slots()
        slot = key_hash_slot(key)
        answer = await self._send(slot, self.routes.get(slot, self.endpoint), args, asking=False)
        if answer.category == "ASK" and answer.moved_to:
            # The slot is moving and the key is (or is to be) on the target: this one command goes
            # there, after ASKING, and the slot's route stays where it was (as cluster clients do).
            answer = await self._send(slot, answer.moved_to, args, asking=True)
        return answer

    async def _send(self, slot: int, address: str, args: tuple[bytes, ...], asking: bool) -> Answer:
        try:
            conn = await self._connection(address)
        except (OSError, TimeoutError) as exc:
            # Nothing was sent: the command cannot have run.
            self._forget(address)
            error = f"connect {address}: {exc.__class__.__name__}"
            return Answer(Outcome.FAIL, error=error, category="connect")
        try:
            reply = await asyncio.wait_for(conn.request(args, asking), self.timeout)
        except TimeoutError:
            self._forget(address)
            error = f"{address}: no answer in {self.timeout:g}s"
            return Answer(Outcome.UNKNOWN, error=error, category="timeout")
        except (OSError, ConnectionError) as exc:
            self._forget(address)
            error = f"{address}: {exc.__class__.__name__} {exc}".strip()
            return Answer(Outcome.UNKNOWN, error=error, category="disconnected")
        if isinstance(reply, hiredis.ReplyError):
            return self._refused(slot, address, str(reply), asking)
        return Answer(Outcome.OK, reply)

    def _refused(self, slot: int, address: str, message: str, asking: bool = False) -> Answer:
        outcome = classify_error(message)
        word = message.split(" ", 1)[0].upper()
        if word == "ASK" and not asking:
            parts = message.split()
            self.redirects += 1
            return Answer(outcome, error=message, category=word, moved_to=parts[2] if len(parts) >= 3 else "")
        if word == "MOVED":
            parts = message.split()
            if len(parts) >= 3:
                self.routes[slot] = parts[2]
                self.redirects += 1
                self._refresh_from = parts[2]
                if address == self.endpoint:
                    # The relay chose this node when we connected; a new connection gets the current primary.
                    self._forget(address)
                return Answer(outcome, error=message, category=word, moved_to=parts[2])
        # The node cannot serve now (stepping down, no leader yet): ask the endpoint afresh next time.
        self._forget(address)
        return Answer(outcome, error=message, category=word)

    async def _refresh_slots(self) -> None:
        """Learn every slot's owner from CLUSTER SLOTS; on any trouble keep what we know."""
        address, self._refresh_from = self._refresh_from, ""
        try:
            conn = await self._connection(address)
            reply = await asyncio.wait_for(conn.request((b"CLUSTER", b"SLOTS")), self.timeout)
        except (OSError, TimeoutError, ConnectionError):
            self._forget(address)
            return
        if not isinstance(reply, list):
            return
        for entry in reply:
            try:
                first, last, (host, port, *_) = entry[0], entry[1], entry[2]
            except (TypeError, ValueError, IndexError):
                continue
            owner = f"{host.decode() if isinstance(host, bytes) else host}:{port}"
            for slot in range(first, last + 1):
                self.routes[slot] = owner

    async def _connection(self, address: str) -> _Connection:
        conn = self.conns.get(address)
        if conn is None:
            host, port = address.rsplit(":", 1)
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=CLIENT_TLS), self.connect_timeout
            )
            conn = self.conns[address] = _Connection(reader, writer)
        return conn

    def _forget(self, address: str) -> None:
        conn = self.conns.pop(address, None)
        if conn is not None:
            conn.close()
        for slot in [s for s, a in self.routes.items() if a == address]:
            del self.routes[slot]

    def close(self) -> None:
        for address in list(self.conns):
            self._forget(address)
