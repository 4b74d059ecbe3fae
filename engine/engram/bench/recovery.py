"""`engram bench-recovery`: how long a killed replica takes to serve again, from snapshot plus tail.

A benchmark, not a test: it starts a local cluster seeded with N keys (`up --restore-from`), takes a
snapshot, appends a tail of single-write journal entries, kills a replica with SIGKILL and times
how long it takes to apply everything again (from the kill to an applied sequence at the journal's
last entry as it was at the kill). With --history H the cluster's journal first receives H entries
of one key each (the RDB restored over and over), so that recovery is measured on a cluster with a
long history behind its snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from engram.journal.client import Journal, StreamState
from engram.platforms.local import cluster
from engram.platforms.local.plan import ClusterSpec
from engram.snapshots.scratch import ScratchValkey


def _say(message: str) -> None:
    print(f"engram bench-recovery: {message}", file=sys.stderr, flush=True)


@dataclass
class RecoveryReport:
    keys: int
    value_size: int
    rdb_bytes: int
    history_entries: int
    tail_entries: int
    journal_last_seq: int
    journal_first_seq: int
    snapshot_seq: int
    seed_seconds: float
    snapshot_seconds: float
    recovery_seconds: float

    def table(self) -> str:
        rows = [
            ("keys", f"{self.keys:,} of {self.value_size} bytes"),
            ("RDB size", f"{self.rdb_bytes / 1e6:.1f} MB"),
            ("entries written since creation", f"{self.journal_last_seq:,} "
                                               f"({self.history_entries:,} of seeded history)"),
            ("journal", f"entries {self.journal_first_seq:,}..{self.journal_last_seq:,} held "
                        f"(snapshot at {self.snapshot_seq:,}, tail of {self.tail_entries:,})"),
            ("seed (restore into a new cluster, first snapshot)", f"{self.seed_seconds:.1f} s"),
            ("snapshot (take, store, rehearse)", f"{self.snapshot_seconds:.1f} s"),
            ("replica recovery after kill -9", f"{self.recovery_seconds:.2f} s"),
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


async def _make_rdb(directory: str, keys: int, value_size: int) -> Path:
    scratch = ScratchValkey(directory)
    await scratch.start()
    try:
        await scratch.conn.execute("DEBUG", "POPULATE", keys, "key", value_size)
        return await scratch.save()
    finally:
        await scratch.stop()


async def _journal_state(urls: list[str], name: str) -> StreamState:
    journal = await Journal.connect(urls, name, 0, name=f"{name}-bench")
    try:
        return await journal.state()
    finally:
        await journal.close()


def _control(node: dict) -> dict[str, str]:
    host, port = node["admin"].rsplit(":", 1)
    tls = {"ssl": True, "ssl_ca_certs": node["admin_ca"]} if node.get("admin_ca") else {}
    with redis.Redis(host=host, port=int(port), protocol=2, socket_timeout=5, **tls) as conn:
        raw = conn.execute_command("ENGRAM.STATUS")
    return {k.decode(): v.decode() for k, v in zip(raw[::2], raw[1::2], strict=True)}


def run(keys: int, value_size: int, tail: int, workdir: str, history: int = 0) -> RecoveryReport:
    base = Path(workdir) / "clusters"
    name = "recovery"
    _say(f"writing an RDB of {keys:,} keys")
    rdb = asyncio.run(_make_rdb(tempfile.mkdtemp(prefix="eg-rdb-", dir=workdir), keys, value_size))
    # A long history: the same keys restored again and again, one journal entry per key.
    passes = max(1, -(-history // keys)) if history else 1
    if history:
        _say(f"seeding a history of {passes * keys:,} entries ({passes} restores of the RDB, "
             "a key per entry)")
    spec = ClusterSpec(name=name, shards=1, replicas=2, restore_from=(str(rdb),) * passes,
                       snapshot_interval=0, snapshot_entries=0, restore_entry_keys=1 if history else 0)
    started = time.monotonic()
    # Seeding runs at about 8,000 entries a second here and the first snapshot replays them all.
    doc = cluster.up(spec, base, timeout=1800 + passes * keys / 2_000, progress=_say)
    try:
        primary = next(n for n in doc["nodes"] if n["role"] == "primary")
        replica = next(n for n in doc["nodes"] if n["role"] == "replica")
        seeded = _control(primary)["committed_seq"]
        while int(_control(replica)["applied_seq"]) < int(seeded):
            time.sleep(0.2)
        seed_seconds = time.monotonic() - started
        _say(f"seeded in {seed_seconds:.1f}s; taking a snapshot")
        started = time.monotonic()
        for line in cluster.snapshot(base, name):
            _say(line)
        snapshot_seconds = time.monotonic() - started
        _say(f"writing a tail of {tail:,} entries")
        host, port = primary["address"].rsplit(":", 1)
        with redis.Redis(host=host, port=int(port)) as client:
            for i in range(tail):
                client.set(f"tail:{i}", "x" * value_size)  # one at a time: one journal entry each
        victim = next(n for n in cluster.status(base, name)["nodes"] if n["role"] == "replica")
        target = int(_control(primary)["committed_seq"])
        _say(f"kill -9 {victim['id']}; waiting for it to apply entry {target:,} again")
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        while True:
            nodes = cluster.status(base, name)["nodes"]
            me = next(n for n in nodes if n["id"] == victim["id"])
            if me["pid"] != victim["pid"] and me["role"] == "replica":
                try:
                    if int(_control(me)["applied_seq"]) >= target:
                        break
                except (redis.RedisError, KeyError, ValueError):
                    pass
            time.sleep(0.05)
        recovery_seconds = time.monotonic() - killed
        state = asyncio.run(_journal_state([j["url"] for j in doc["journal"]], name))
        return RecoveryReport(
            keys=keys, value_size=value_size, rdb_bytes=rdb.stat().st_size,
            history_entries=passes * keys if history else 0, tail_entries=tail,
            journal_last_seq=state.last_seq, journal_first_seq=state.first_seq,
            snapshot_seq=state.first_seq - 1, seed_seconds=seed_seconds,
            snapshot_seconds=snapshot_seconds, recovery_seconds=recovery_seconds,
        )
    finally:
        cluster.down(base, name)


def handle(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="eg-recovery-", dir="/tmp") as workdir:
        report = run(args.keys, args.value_size, args.tail, workdir, args.history)
    print(json.dumps(asdict(report), indent=2) if args.json else report.table())
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench-recovery", help="time a replica's recovery from snapshot plus tail",
                              description=__doc__)
    p.add_argument("--keys", type=int, default=1_000_000, help="(default: %(default)s)")
    p.add_argument("--value-size", type=int, default=100, metavar="BYTES", help="(default: %(default)s)")
    p.add_argument("--tail", type=int, default=2_000, metavar="ENTRIES",
                   help="single-write entries appended after the snapshot (default: %(default)s)")
    p.add_argument("--history", type=int, default=0, metavar="ENTRIES",
                   help="journal entries (one key each) written before the first snapshot (default: none)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handle)
    return p
