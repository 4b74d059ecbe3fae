"""The committer as a byte pump, against an in-memory journal: entries are cut only at safe places
and carry the database in effect at their first byte, replaying them gives what the stream ran, and
no offset is acknowledged before every write up to it is committed."""

from __future__ import annotations

import asyncio
import random
import zlib
from typing import Any

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from engram.journal.client import Appended
from engram.journal.entries import Entry, EntryType
from engram.journal.errors import Fenced
from engram.metrics import COMMIT_STAGES
from engram.replication.committer import Committer
from engram.replication.streamscan import StreamScanner
from engram.valkey.connection import encode
from tests.unit.streams import COMMANDS, chunked, is_link_only, stream_of

BASE = 1000  # the stream offset the tap attached at


def _parse(payload: bytes) -> list[list[bytes]]:
    reader = hiredis.Reader()
    reader.feed(payload)
    commands = []
    while (command := reader.gets()) is not False:
        commands.append(command)
    return commands


def _effects(commands: list[list[bytes]], db: int = 0) -> list[tuple[int, list[bytes]]]:
    """What a replica runs, command by command, with the database each one runs in."""
    out = []
    for command in commands:
        name = command[0].lower()
        if name == b"select":
            db = int(command[1])
        elif not is_link_only(command) and name not in (b"multi", b"exec"):
            out.append((db, command))
    return out


class FakeJournal:
    """Appends commit in the order sent, each after a few turns of the loop; sending yields too,
    as a NATS publish can. gate, when set, holds every commit until it opens; from sequence
    misplace_at on, appends land after someone else's entry (the committer is fenced)."""

    def __init__(self, rng: random.Random, last_seq: int, on_commit: Any = None) -> None:
        self.rng = rng
        self.entries: list[Entry] = []
        self.proposed = last_seq
        self.gate: asyncio.Event | None = None
        self.misplace_at: int | None = None
        self.on_commit = on_commit
        self._previous: asyncio.Task[Appended] | None = None

    async def _turns(self, most: int) -> None:
        for _ in range(self.rng.randint(0, most)):
            await asyncio.sleep(0)

    async def append_pipelined(self, entry: Entry, expected: int, msg_id: str,
                               timeout: float | None = None) -> asyncio.Task[Appended]:
        await self._turns(2)
        assert expected == self.proposed
        self.proposed += 1
        previous = self._previous

        async def land() -> Appended:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await self._turns(3)
            if self.gate is not None:
                await self.gate.wait()
            if self.misplace_at is not None and expected >= self.misplace_at:
                return Appended(expected + 2)  # not in our history
            self.entries.append(entry)
            if self.on_commit is not None:
                self.on_commit()
            return Appended(expected + 1)

        self._previous = asyncio.get_running_loop().create_task(land())
        return self._previous

    async def append(self, entry: Entry, expected: int, msg_id: str,
                     timeout: float | None = None) -> Appended:
        task = await self.append_pipelined(entry, expected, msg_id, timeout)
        return await task

    elections = 0

    def election_after(self, seen: int) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()  # this journal never elects

    async def append_until_elected(self, entry: Entry, expected: int, msg_id: str,
                                   timeout: float | None = None) -> Appended:
        return await self.append(entry, expected, msg_id, timeout)

    def committed_commands(self) -> list[list[bytes]]:
        """The commands of every fully committed batch (a batch's last piece has more=False)."""
        data = [e for e in self.entries if e.type is EntryType.DATA]
        while data and data[-1].more:
            data.pop()
        return _parse(b"".join(e.payload for e in data))


class FakeTap:
    """Records acknowledgements and checks each against what the journal has committed."""

    def __init__(self, journal: FakeJournal, commands: list[list[bytes]]) -> None:
        self.offset = BASE
        self.journal = journal
        self.acks: list[int] = []
        ends, end = [], BASE
        for command in commands:
            end += len(encode(command))
            ends.append((end, command))
        self._data_ends = [end for end, command in ends if not is_link_only(command)]

    def ack(self, offset: int) -> None:
        writes_acked = sum(1 for end in self._data_ends if end <= offset)
        committed = [c for c in self.journal.committed_commands() if not is_link_only(c)]
        assert writes_acked <= len(committed), f"offset {offset} acknowledged before its writes committed"
        self.acks.append(offset)


def _committer(journal: FakeJournal, tap: FakeTap, max_batch_bytes: int = 1 << 20,
               window: int = 4) -> Committer:
    return Committer(journal, tap, "n0", 1, 2, 0, 30.0, max_batch_bytes, window,  # type: ignore[arg-type]
                     lambda seq, latency: None)


async def _pump(committer: Committer, tap: FakeTap, chunks: list[bytes], rng: random.Random) -> None:
    scanner = StreamScanner(BASE)
    for chunk in chunks:
        scan = scanner.feed(chunk)
        tap.offset = scanner.offset
        committer.feed(chunk, scan)
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)


@settings(max_examples=200, deadline=None)
@given(COMMANDS, st.lists(st.integers(0, 10_000), max_size=10), st.integers(8, 300), st.integers(1, 4),
       st.integers(0, 2**32))
def test_entries_replay_the_stream_and_acks_never_run_ahead_of_the_journal(
    commands: list[list[bytes]], cuts: list[int], max_batch_bytes: int, window: int, seed: int
) -> None:
    data = stream_of(commands)
    rng = random.Random(seed)

    async def scenario() -> None:
        journal = FakeJournal(rng, 2)
        tap = FakeTap(journal, commands)
        committer = _committer(journal, tap, max_batch_bytes, window)
        running = asyncio.get_running_loop().create_task(committer.run())
        await _pump(committer, tap, chunked(data, cuts), rng)
        await committer.drain(5)
        committer.close()
        await running

        batches: list[tuple[int, bytes]] = []
        pieces: list[bytes] = []
        for entry in journal.entries:
            assert entry.type is EntryType.DATA
            assert len(entry.payload) <= max_batch_bytes
            pieces.append(entry.payload)
            if not entry.more:
                batches.append((entry.db, b"".join(pieces)))
                pieces = []
        assert not pieces
        replayed = []
        for db, payload in batches:
            batch = _parse(payload)
            names = [c[0].lower() for c in batch]
            assert names.count(b"multi") == names.count(b"exec")  # a transaction is never split
            assert not all(is_link_only(c) for c in batch)  # link-only alone is never journaled
            replayed += _effects(batch, db)
        assert replayed == _effects(commands)
        assert committer.checksum == zlib.crc32(b"".join(e.payload for e in journal.entries))
        assert tap.acks == sorted(tap.acks)
        assert tap.acks[-1:] == ([BASE + len(data)] if data else [])
        assert committer.idle and committer.stream_offset == BASE + len(data)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def _run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


PING = encode([b"PING"])
GETACK = encode([b"REPLCONF", b"GETACK", b"*"])
SET = encode([b"SET", b"k", b"v"])


def test_an_idle_primary_acknowledges_link_only_commands_without_journaling_them() -> None:
    async def scenario() -> None:
        journal = FakeJournal(random.Random(1), 2)
        tap = FakeTap(journal, [[b"PING"], [b"PING"]])
        committer = _committer(journal, tap)
        scanner = StreamScanner(BASE)
        committer.feed(PING[:3], scanner.feed(PING[:3]))
        assert tap.acks == [] and not committer.idle  # half a command waits for the rest
        committer.feed(PING[3:] + PING, scanner.feed(PING[3:] + PING))
        assert tap.acks == [BASE + 2 * len(PING)] and committer.idle
        assert journal.entries == []

    _run(scenario)


def test_link_only_commands_after_a_write_are_acknowledged_once_the_write_commits() -> None:
    async def scenario() -> None:
        commands = [[b"SET", b"k", b"v"], [b"REPLCONF", b"GETACK", b"*"], [b"PING"]]
        journal = FakeJournal(random.Random(2), 2)
        journal.gate = asyncio.Event()
        tap = FakeTap(journal, commands)
        committer = _committer(journal, tap)
        running = asyncio.get_running_loop().create_task(committer.run())
        scanner = StreamScanner(BASE)
        committer.feed(SET + GETACK, scanner.feed(SET + GETACK))
        await asyncio.sleep(0.01)
        committer.feed(PING, scanner.feed(PING))  # arrives while the write is in flight
        await asyncio.sleep(0.01)
        assert tap.acks == []
        journal.gate.set()
        await committer.drain(5)
        # The entry holds the write alone; the acknowledgement covers what followed it.
        assert [e.payload for e in journal.entries] == [SET]
        assert tap.acks[-1] == BASE + len(SET + GETACK + PING)
        committer.close()
        await running

    _run(scenario)


def test_a_transaction_split_across_chunks_is_one_entry_and_a_select_names_its_db() -> None:
    async def scenario() -> None:
        tx = encode([b"MULTI"]) + SET + encode([b"INCR", b"n"]) + encode([b"EXEC"])
        stream = encode([b"SELECT", b"4"]) + SET + tx + PING
        commands = _parse(stream)
        journal = FakeJournal(random.Random(3), 2)
        tap = FakeTap(journal, commands)
        committer = _committer(journal, tap, window=1)
        running = asyncio.get_running_loop().create_task(committer.run())
        first = len(encode([b"SELECT", b"4"]) + SET) + 20  # inside the transaction
        scanner = StreamScanner(BASE)
        committer.feed(stream[:first], scanner.feed(stream[:first]))
        await asyncio.sleep(0.01)  # the part before the transaction goes out on its own
        committer.feed(stream[first:], scanner.feed(stream[first:]))
        await committer.drain(5)
        payloads = [(e.db, e.payload) for e in journal.entries]
        assert payloads == [(0, stream[:first - 20]), (4, tx)]
        assert tap.acks[-1] == BASE + len(stream)
        committer.close()
        await running

    _run(scenario)


def test_nothing_is_acknowledged_after_the_committer_was_fenced() -> None:
    async def scenario() -> None:
        journal = FakeJournal(random.Random(4), 2)
        journal.misplace_at = 2  # the first append lands behind another node's entry
        tap = FakeTap(journal, [[b"SET", b"k", b"v"], [b"PING"]])
        committer = _committer(journal, tap)
        running = asyncio.get_running_loop().create_task(committer.run())
        scanner = StreamScanner(BASE)
        committer.feed(SET, scanner.feed(SET))
        with pytest.raises(Fenced):
            await running
        committer.feed(PING, scanner.feed(PING))  # the tap runs until the node steps down
        assert tap.acks == []

    _run(scenario)


def _count(stage: str | None) -> tuple[float, float]:
    """(observations, seconds) of one commit stage, or of the whole path when stage is None."""
    name = "engram_commit_path_seconds" if stage is None else "engram_commit_stage_seconds"
    labels = {} if stage is None else {"stage": stage}
    count = REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0
    return count, REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0


def test_each_entry_of_writes_records_its_batch_append_and_settle_stages() -> None:
    async def scenario() -> None:
        journal = FakeJournal(random.Random(5), 2)
        journal.gate = asyncio.Event()
        tap = FakeTap(journal, [[b"SET", b"k", b"v"]])
        committer = _committer(journal, tap)
        before = {stage: _count(stage) for stage in (*COMMIT_STAGES, None)}
        running = asyncio.get_running_loop().create_task(committer.run())
        committer.feed(SET, StreamScanner(BASE).feed(SET))
        await asyncio.sleep(0.05)  # the journal takes 50 ms to answer
        journal.gate.set()
        await committer.drain(5)
        committer.close()
        await running
        added = {stage: (c - before[stage][0], s - before[stage][1])
                 for stage, (c, s) in ((st, _count(st)) for st in before)}
        assert all(count == 1 for count, _ in added.values())
        # The fake journal's answer is not timed: the wait counts as the append, settle is 0.
        assert added["append"][1] >= 0.04 and added["batch"][1] < 0.04 and added["settle"][1] == 0
        path = added[None][1]
        assert path == pytest.approx(sum(added[s][1] for s in COMMIT_STAGES), abs=1e-3)

    _run(scenario)
