"""The journal: one NATS JetStream stream per shard, behind a narrow interface.

append (conditional, with a message id), tail from a sequence, last sequence, get, truncate.
Everything NATS-specific stays in this module so the backend could be swapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.client import JetStreamContext

from engram.journal import home
from engram.journal.acks import AckInbox, Reply
from engram.journal.entries import Entry, EntryType
from engram.journal.errors import (
    Fenced,
    IdentityMismatch,
    JournalError,
    JournalTimeout,
    NoQuorum,
    StreamMissing,
)
from engram.journal.placement import StreamPeer
from engram.journal.security import PLAIN, JournalSecurity
from engram.journal.servers import ZONE_TAG

log = logging.getLogger(__name__)


class _TLSCloseNoise(logging.Filter):
    """nats-py's protocol returns True from eof_received, which asyncio warns about once per TLS
    connection closed by the server (a journal server restarting): not a problem worth a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_TLSCloseNoise())

WRONG_LAST_SEQUENCE = 10071
STREAM_NAME_IN_USE = 10058
DUPLICATE_IN_PROCESS = 10158
# A tail whose consumer delivered nothing this long asks the stream's leader whether entries are
# missing (a primary renews every quarter lease, 0.5 s by default, so a live stream is never this
# quiet), and reads at most FILL_LIMIT of them itself.
FILL_AFTER = 0.75
FILL_LIMIT = 1000
# Stream metadata keys: who the stream belongs to, set once by provisioning.
META_CLUSTER_ID = "engram.cluster-id"
META_SHARD = "engram.shard"
_LAST_SEQ_IN_MESSAGE = re.compile(r"(\d+)\s*$")
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def stream_name(cluster: str, shard: int) -> str:
    """Stream name of a shard; NATS forbids dots, spaces and wildcards in it."""
    if not _NAME_OK.match(cluster):
        raise ValueError(f"cluster name {cluster!r} may only hold letters, digits, '-' and '_'")
    return f"ENGRAM_{cluster}_{shard}"


def _refusal(code: int, err_code: int, description: str, expected: int | None) -> JournalError:
    """A refusal from the journal as our error type (Fenced for a failed condition)."""
    if err_code == WRONG_LAST_SEQUENCE:
        match = _LAST_SEQ_IN_MESSAGE.search(description or "")
        return Fenced(expected or 0, int(match[1]) if match else None)
    if err_code == DUPLICATE_IN_PROCESS:
        # The first try with this message id has not been settled yet: its outcome is unknown,
        # and a later retry with the same id gets its answer.
        return JournalTimeout(f"journal still processing an earlier try of this append: {description}")
    if code == 503 or err_code in (10008, 10077):
        return NoQuorum(f"journal stream unavailable: {description}")
    return JournalError(f"journal refused the request: {description} (code {err_code})")


def _translate(exc: BaseException, expected: int | None) -> JournalError:
    if isinstance(exc, JournalError):
        return exc
    if isinstance(exc, nats.js.errors.APIError):
        return _refusal(exc.code or 0, exc.err_code or 0, exc.description or "", expected)
    if isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        return JournalTimeout("journal did not answer in time (no quorum or servers unreachable)")
    if isinstance(exc, (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)):
        return NoQuorum("no journal server answered for the stream (stream leader missing)")
    if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.NoServersError)):
        return NoQuorum(f"journal connection lost: {exc}")
    return JournalError(f"journal failure: {exc!r}")


def check_genesis(entry: Entry | None, stream: str, cluster_id: str, shard: int) -> None:
    """The first entry must name this cluster and shard; anything else is another history."""
    if entry is None or entry.type is not EntryType.GENESIS:
        found = "nothing" if entry is None else f"a {entry.type.value} entry"
        raise IdentityMismatch(f"stream {stream} starts with {found}, not with its genesis entry")
    if entry.cluster_id != cluster_id or entry.shard != shard:
        raise IdentityMismatch(
            f"stream {stream} was provisioned for cluster id {entry.cluster_id!r} shard {entry.shard}, "
            f"not for cluster id {cluster_id!r} shard {shard}"
        )


async def wait_for_stream_leader(js: JetStreamContext, stream: str, timeout: float) -> None:
    """A new replicated stream answers writes only once its Raft group has elected a leader."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster is None or info.cluster.leader:
                return
        except Exception as exc:
            log.debug("stream info while waiting for a leader: %r", exc)
        if asyncio.get_running_loop().time() > deadline:
            raise NoQuorum(f"stream {stream} has no leader (journal quorum missing?)")
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Appended:
    """Where an append landed; earlier means it had landed on a previous try, at an unknown time."""

    seq: int
    earlier: bool = False
    # time.monotonic() when the journal's answer was read; 0.0 when not known.
    answered_at: float = 0.0


@dataclass
class StreamState:
    first_seq: int
    last_seq: int
    messages: int
    bytes: int
    # A member of a leaderless stream may still answer with what it holds: readable, not writable.
    has_leader: bool = True


class Journal:
    """A shard's log. One instance per node; safe to share between tasks."""

    def __init__(self, nc: NatsClient, cluster: str, shard: int, replicas: int, timeout: float) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.stream = stream_name(cluster, shard)
        self.shard = shard
        self._cluster = cluster
        self._acks = AckInbox(nc)
        self.subject = f"engram.{cluster}.{shard}"
        self.replicas = replicas
        self.timeout = timeout
        # JetStream's leader-elected advisories for this stream seen so far (watch_elections).
        self.elections = 0
        self._election_waiters: set[asyncio.Future[None]] = set()
        self._elections: Subscription | None = None

    async def stay_home(self, home_url: str) -> None:
        """Run forever, keeping the connection on `home_url` when it answers (journal/home.py)."""
        await home.stay_home(self._nc, home_url)

    def for_shard(self, shard: int) -> Journal:
        """The journal of another shard of the same cluster, sharing this connection."""
        journal = Journal(self._nc, self._cluster, shard, self.replicas, self.timeout)
        journal._acks = self._acks
        return journal

    def jetstream_in(self, domain: str) -> JetStreamContext:
        """The JetStream API of another domain (another region's journal, over the region link)."""
        return self._nc.jetstream(domain=domain, timeout=self.timeout)

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context, shared with the cluster metadata bucket."""
        return self._js

    @classmethod
    async def connect(
        cls,
        urls: list[str],
        cluster: str,
        shard: int,
        replicas: int = 3,
        timeout: float = 5.0,
        name: str = "engram",
        security: JournalSecurity = PLAIN,
    ) -> Journal:
        async def _quiet(exc: Exception) -> None:
            log.debug("journal connection: %s", exc)

        try:
            nc = await nats.connect(
                servers=urls,
                name=name,
                connect_timeout=2,
                reconnect_time_wait=0.25,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=_quiet,
                # A server cut off with its zone answers nothing, not even an error: notice within
                # about 2 s and move on to the next server, in the order given (the caller's own
                # zone first, see orchestration/node_config.py), not a random one.
                ping_interval=1,
                max_outstanding_pings=2,
                dont_randomize=True,
                **security.connect_options(),  # type: ignore[arg-type]
            )
        except Exception as exc:
            raise NoQuorum(f"cannot reach any journal server at {', '.join(urls)}: {exc}") from exc
        return cls(nc, cluster, shard, replicas, timeout)

    async def close(self) -> None:
        try:
            await self._nc.close()
        except Exception as exc:  # closing a broken connection must not mask the real error
            log.debug("journal close: %r", exc)

    def _config(self, cluster_id: str) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            retention=api.RetentionPolicy.LIMITS,
            # An entry no snapshot covers must never be dropped silently to make room.
            discard=api.DiscardPolicy.NEW,
            deny_delete=True,
            allow_direct=False,
            duplicate_window=120.0,
            metadata={META_CLUSTER_ID: cluster_id, META_SHARD: str(self.shard)},
        )

    async def create_stream(self, cluster_id: str) -> None:
        """Provisioning only: create the shard's stream and write its genesis entry (idempotent).

        Nodes never call this: a stream that cannot be found may only be hidden by a lagging
        journal server, and creating it then would start a second history.
        """
        try:
            await self._js.add_stream(self._config(cluster_id))
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise _translate(exc, None) from exc
            # Held already: by this cluster (a re-run of provisioning) or by another one.
        except Exception as exc:
            raise _translate(exc, None) from exc
        await self.open_stream(cluster_id)
        genesis = Entry(EntryType.GENESIS, 0, "provisioning", cluster_id=cluster_id, shard=self.shard)
        # A stream just made may have its leader before the servers route its subject to it ("no
        # responders", seen in CI): the append is asked again, with the same id, for a while.
        deadline = time.monotonic() + self.timeout * 2
        while True:
            try:
                await self.append(genesis, 0, f"genesis.{cluster_id}.{self.shard}")
            except Fenced:
                pass  # the stream holds entries already: its first must be this genesis, checked here
            except NoQuorum:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            break
        if (await self.state()).first_seq > 1:
            # Truncated behind a snapshot (docs/snapshots.md): the genesis entry is gone and the
            # stream's metadata, checked by open_stream, is what names its cluster and shard.
            return
        check_genesis(await self.get(1), self.stream, cluster_id, self.shard)

    async def open_stream(self, cluster_id: str) -> None:
        """A node's start: the stream must exist and belong to this cluster; never creates it."""
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            raise StreamMissing(
                f"stream {self.stream} not found: it is created by provisioning, not by nodes "
                "(or a journal server that has not loaded it yet answered)"
            ) from None
        except Exception as exc:
            raise _translate(exc, None) from exc
        found = dict(info.config.metadata or {})
        if found.get(META_CLUSTER_ID) != cluster_id or found.get(META_SHARD) != str(self.shard):
            raise IdentityMismatch(
                f"stream {self.stream} belongs to cluster id {found.get(META_CLUSTER_ID)!r} shard "
                f"{found.get(META_SHARD)!r}, not to cluster id {cluster_id!r} shard {self.shard}"
            )
        await wait_for_stream_leader(self._js, self.stream, self.timeout * 2)

    async def state(self) -> StreamState:
        try:
            info = await self._js.stream_info(self.stream)
        except Exception as exc:
            raise _translate(exc, None) from exc
        s = info.state
        leader = info.cluster is None or bool(info.cluster.leader)
        return StreamState(s.first_seq, s.last_seq, s.messages, s.bytes, leader)

    async def last_seq(self) -> int:
        return (await self.state()).last_seq

    async def has_leader(self, timeout: float) -> bool:
        """Whether the shard's stream currently has a Raft leader, i.e. can take appends."""
        try:
            info = await asyncio.wait_for(self._js.stream_info(self.stream), timeout)
        except Exception:
            return False
        return info.cluster is None or bool(info.cluster.leader)

    async def peers(self, timeout: float) -> list[StreamPeer]:
        """The servers holding the shard's stream: its leader and followers, as the leader sees them."""
        try:
            info = await asyncio.wait_for(self._js.stream_info(self.stream), timeout)
        except Exception as exc:
            raise _translate(exc, None) from exc
        cluster = info.cluster
        if cluster is None or not cluster.leader:
            return []
        followers = [StreamPeer(r.name, current=bool(r.current), offline=bool(r.offline))
                     for r in cluster.replicas or []]
        return [StreamPeer(cluster.leader, leader=True), *followers]

    async def move_leader(self, zone: str, timeout: float) -> None:
        """Ask the stream's leader to hand over to its follower in `zone` (by the server's zone tag)."""
        request = json.dumps({"placement": {"tags": [f"{ZONE_TAG}:{zone}"]}}).encode()
        await self.step_down(self.stream, timeout, request)

    async def step_down(self, stream: str, timeout: float, request: bytes = b"") -> None:
        """Ask a stream of this journal (an inbound stream, say) to elect another leader; `request`
        may say where (a placement)."""
        try:
            reply = await self._nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request,
                                           timeout=timeout)
        except Exception as exc:
            raise _translate(exc, None) from exc
        error = json.loads(reply.data).get("error")
        if error:
            raise _refusal(int(error.get("code", 0)), int(error.get("err_code", 0)),
                           str(error.get("description", "")), None)

    async def watch_elections(self) -> None:
        """Follow JetStream's leader-elected advisories for the shard's stream (see election_after)."""
        if self._elections is not None:
            return

        async def _elected(_msg: nats.aio.msg.Msg) -> None:
            self.elections += 1
            for waiter in list(self._election_waiters):
                if not waiter.done():
                    waiter.set_result(None)
            self._election_waiters.clear()

        self._elections = await self._nc.subscribe(
            f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{self.stream}", cb=_elected
        )

    def election_after(self, seen: int) -> asyncio.Future[None]:
        """Resolves once the stream has elected a leader more than `seen` times (see `elections`)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.elections > seen:
            waiter.set_result(None)
        else:
            self._election_waiters.add(waiter)
            waiter.add_done_callback(self._election_waiters.discard)
        return waiter

    async def append_until_elected(
        self, entry: Entry, expected_last_seq: int | None, msg_id: str, timeout: float
    ) -> Appended:
        """`append`, given up as soon as the stream elects a leader (see watch_elections).

        A request the old leader never answered is never answered by the new one either: sending it
        again at once, with the same id, beats sitting out the rest of its timeout.
        """
        elected = self.election_after(self.elections)
        append = asyncio.ensure_future(self.append(entry, expected_last_seq, msg_id, timeout))
        try:
            await asyncio.wait({append, elected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            elected.cancel()
        if append.done():
            return append.result()
        append.cancel()
        with contextlib.suppress(asyncio.CancelledError, JournalError):
            await append
        raise JournalTimeout("the stream elected a new leader before answering; sending again")

    def _headers(self, entry: Entry, expected_last_seq: int | None, msg_id: str) -> dict[str, str]:
        headers = entry.headers()
        headers["Nats-Msg-Id"] = msg_id
        if expected_last_seq is not None:
            headers["Nats-Expected-Last-Sequence"] = str(expected_last_seq)
        return headers

    async def append(
        self, entry: Entry, expected_last_seq: int | None, msg_id: str, timeout: float | None = None
    ) -> Appended:
        """Append and wait for the quorum ack. msg_id must be unique to this one append, ever."""
        try:
            ack = await self._js.publish(
                self.subject, entry.payload, timeout=timeout or self.timeout,
                headers=self._headers(entry, expected_last_seq, msg_id),
            )
        except Exception as exc:
            return await self._landed_or_raise(_translate(exc, expected_last_seq), msg_id)
        return Appended(ack.seq, earlier=bool(ack.duplicate), answered_at=time.monotonic())

    async def _landed_or_raise(self, error: JournalError, msg_id: str) -> Appended:
        """A retried append whose first try landed is refused as Fenced: recognise it by its id.

        The server checks the expected last sequence before the duplicate window, so the message
        id alone does not make a conditional retry safe. This is sound only because message ids
        are never reused: an id that names an older append would pass an old entry off as new.
        """
        if isinstance(error, Fenced) and error.actual is not None and error.actual > error.expected:
            try:
                entry = await self.get(error.expected + 1)
            except JournalError:
                raise error from None  # unproven is not landed: fenced is the safe answer
            if entry is not None and entry.msg_id == msg_id:
                return Appended(entry.seq, earlier=True)
        raise error

    async def append_pipelined(
        self, entry: Entry, expected_last_seq: int | None, msg_id: str, timeout: float | None = None
    ) -> asyncio.Task[Appended]:
        """Send an append now; the returned awaitable yields its sequence.

        Sends happen in call order, so a single writer can keep several conditional appends in
        flight (the stream leader checks against the last proposed sequence). The condition names
        a position, not an entry: once an earlier append of the writer is refused, a later one can
        land behind another writer's entry. Replicas skip such entries (see the applier's term
        chain), and the writer steps down on the refusal.
        """
        try:
            future = await self._acks.send(
                self.subject, entry.payload, self._headers(entry, expected_last_seq, msg_id)
            )
        except Exception as exc:
            raise _translate(exc, expected_last_seq) from exc

        async def _wait() -> Appended:
            try:
                async with asyncio.timeout(timeout or self.timeout):
                    reply: Reply = await future
            except Exception as exc:
                return await self._landed_or_raise(_translate(exc, expected_last_seq), msg_id)
            if reply.refused:
                error = _refusal(reply.code, reply.err_code, reply.description, expected_last_seq)
                return await self._landed_or_raise(error, msg_id)
            return Appended(reply.seq, earlier=reply.duplicate, answered_at=reply.received_at)

        # A task, so that an abandoned append can be cancelled rather than left unawaited.
        return asyncio.get_running_loop().create_task(_wait())

    async def get(self, seq: int) -> Entry | None:
        """The entry at seq, or None if there is none (purged or never written)."""
        try:
            # Never a direct get: any replica, a lagging one too, may answer those.
            msg = await self._js.get_msg(self.stream, seq, direct=False)
        except nats.js.errors.NotFoundError:
            return None
        except Exception as exc:
            raise _translate(exc, None) from exc
        return Entry.decode(msg.headers, msg.data or b"", msg.seq or seq)

    async def tail(self, start_seq: int, fill_after: float = FILL_AFTER) -> AsyncIterator[Entry]:
        """Yield committed entries from start_seq on, forever, in order, without gaps.

        Entries come from an ordered consumer. JetStream places that consumer on one of the stream's
        servers, chosen at random; if that server is cut off, entries stop coming until the consumer
        is made again, which needs JetStream's metadata leader (an election away when it was cut off
        too). So when nothing came for `fill_after` seconds, the stream's leader is asked for its last
        entry and the missing ones are read from it one by one (see _fill)."""
        queue: asyncio.Queue[Entry | BaseException] = asyncio.Queue()

        async def _on_message(msg: nats.aio.msg.Msg) -> None:
            try:
                meta = msg.metadata
                entry = Entry.decode(msg.headers, msg.data, meta.sequence.stream)
                entry.pending = meta.num_pending or 0
                queue.put_nowait(entry)
            except Exception as exc:
                queue.put_nowait(exc)

        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq)
        )
        try:
            sub = await self._js.subscribe(
                self.subject, cb=_on_message, ordered_consumer=True, config=config,
                idle_heartbeat=1.0, stream=self.stream,
            )
        except Exception as exc:
            raise _translate(exc, None) from exc
        next_seq = max(1, start_seq)
        try:
            while True:
                try:
                    if queue.empty():
                        item = await asyncio.wait_for(queue.get(), fill_after)
                    else:
                        item = queue.get_nowait()
                except TimeoutError:
                    async for entry in self._fill(next_seq, fill_after):
                        next_seq = entry.seq + 1
                        yield entry
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item.seq < next_seq:
                    continue  # read already by _fill
                next_seq = item.seq + 1
                yield item
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("tail unsubscribe: %r", exc)

    async def _fill(self, next_seq: int, timeout: float) -> AsyncIterator[Entry]:
        """The entries from next_seq to the stream's last, read from its leader (at most FILL_LIMIT:
        a consumer that is only slow catches up faster than single reads); none when the leader does
        not answer in `timeout`. Entries the truncation removed are left to the consumer, which
        reports them as a gap."""
        try:
            last = (await asyncio.wait_for(self.state(), timeout)).last_seq
        except (JournalError, TimeoutError):
            return
        if last < next_seq:
            return
        log.info("stream %s: the consumer delivered nothing for %.1fs; reading entries %d..%d from the "
                 "stream's leader", self.stream, timeout, next_seq, last)
        for seq in range(next_seq, min(last, next_seq + FILL_LIMIT - 1) + 1):
            try:
                entry = await asyncio.wait_for(self.get(seq), timeout)
            except (JournalError, TimeoutError):
                return
            if entry is None:
                return
            entry.pending = last - seq
            yield entry

    async def truncate(self, keep_from_seq: int) -> None:
        """Drop entries below keep_from_seq (the last entry is always kept)."""
        try:
            await self._js.purge_stream(self.stream, seq=keep_from_seq)
        except Exception as exc:
            raise _translate(exc, None) from exc

    async def delete_stream(self) -> None:
        try:
            await self._js.delete_stream(self.stream)
        except nats.js.errors.NotFoundError:
            return
        except Exception as exc:
            raise _translate(exc, None) from exc
