"""Restore sources and export: argument checks, which snapshots a restore takes, file names."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engram.cli import provision as provision_cli
from engram.cli.main import build_parser
from engram.journal.client import StreamState
from engram.journal.entries import Entry, EntryType
from engram.journal.security import PLAIN, JournalSecurity, journal_security_from_args
from engram.orchestration.provision import (
    ProvisionError,
    ProvisionRequest,
    _same_cluster,
    _seeded_before,
    provision,
)
from engram.platforms.local import plan
from engram.snapshots.record import Position, SnapshotError, SnapshotRecord
from engram.snapshots.seed import SEED_NODE
from engram.snapshots.source import SourceError, export_name, pick_newest


def _record(shard: int, seq: int, engine: str = "0.1.0") -> SnapshotRecord:
    return SnapshotRecord("cid", shard, Position(seq, 0, 0, 1), "digest", "ab" * 32, 10, 1, engine, "8.0",
                          0.0, verified=True)


def test_provision_takes_rdb_files_or_a_cluster_never_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        ProvisionRequest("new", "id", 1, restore_from=("a.rdb",), restore_cluster="old")
    with pytest.raises(ValueError, match="give that cluster too"):
        ProvisionRequest("new", "id", 1, restore_journal=("nats://x:4222",))
    ProvisionRequest("new", "id", 1, restore_cluster="old", restore_journal=("nats://x:4222",))


def test_the_provision_command_refuses_both_restore_flags() -> None:
    parser = build_parser()
    base = ["provision", "--cluster", "new", "--shards", "3", "--journal", "nats://j:4222"]
    args = parser.parse_args([*base, "--restore-from-cluster", "old", "--restore-journal", "nats://a,nats://b"])
    assert (args.restore_from_cluster, args.restore_journal) == ("old", "nats://a,nats://b")
    assert args.restore_from == []
    args = parser.parse_args([*base, "--restore-from", "/restore/a.rdb", "--restore-from", "/restore/b.rdb"])
    assert args.restore_from == ["/restore/a.rdb", "/restore/b.rdb"]
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([*base, "--restore-from", "a.rdb", "--restore-from-cluster", "old"])
    assert exited.value.code == 2


def test_a_restore_journal_without_a_source_cluster_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    args = build_parser().parse_args(["provision", "--cluster", "new", "--shards", "1", "--journal", "nats://j:1",
                                      "--restore-journal", "nats://o:1"])
    assert args.func(args) == 2
    assert "give that cluster too" in capsys.readouterr().err


def test_a_cluster_restored_from_itself_is_refused_before_the_journal_is_touched() -> None:
    request = ProvisionRequest("same", "id", 1, restore_cluster="same")
    with pytest.raises(ProvisionError, match="cannot be restored from itself") as raised:
        # The URLs lead nowhere: the check must come before any connection.
        asyncio.run(provision(["nats://127.0.0.1:1"], request, timeout=1))
    assert raised.value.permanent
    # The same name on other journal servers is another cluster.
    other = ProvisionRequest("same", "id", 1, restore_cluster="same", restore_journal=("nats://127.0.0.1:2",))
    assert not _same_cluster(other, ["nats://127.0.0.1:1"])
    assert _same_cluster(replace(other, restore_journal=("nats://127.0.0.1:1",)), ["nats://127.0.0.1:1"])


def test_local_up_restores_from_files_or_a_cluster_never_itself(tmp_path: Path) -> None:
    rdb = tmp_path / "a.rdb"
    rdb.write_bytes(b"")
    with pytest.raises(plan.PlanError, match="exclude each other"):
        plan.ClusterSpec(name="new", restore_from=(str(rdb),), restore_cluster="old")
    with pytest.raises(plan.PlanError, match="cannot be restored from itself"):
        plan.ClusterSpec(name="new", restore_cluster="new")
    spec = plan.ClusterSpec(name="new", restore_cluster="old")
    with pytest.raises(plan.PlanError, match="journal servers are not known"):
        plan.plan(spec, tmp_path / "new", "nats-server", "valkey-server")
    state = plan.plan(spec, tmp_path / "new", "nats-server", "valkey-server", ["nats://127.0.0.1:9"])
    request = plan.provision_request(state)
    assert (request.restore_cluster, request.restore_journal) == ("old", ("nats://127.0.0.1:9",))


def test_local_snapshot_export_parses_and_keep_stays_unset() -> None:
    args = build_parser().parse_args(["local", "snapshot", "c0", "--export", "out"])
    assert (args.export, args.keep, args.shard) == ("out", None, None)


def test_a_restore_takes_each_shards_newest_and_names_every_shard_without_one() -> None:
    assert pick_newest("src", {1: _record(1, 9), 0: _record(0, 5)}) == [_record(0, 5), _record(1, 9)]
    with pytest.raises(SourceError, match=r"no verified snapshot of shards 0, 2: take one first with "
                                          r"`engram local snapshot src`"):
        pick_newest("src", {0: None, 1: _record(1, 9), 2: None})
    with pytest.raises(SourceError, match=r"taken by engine 999\.0\.0, newer than"):
        pick_newest("src", {0: replace(_record(0, 5), engine_version="999.0.0")})


def test_exported_files_name_cluster_shard_and_position() -> None:
    assert export_name("orders", _record(2, 1234)) == "orders-shard2-seq1234.rdb"


class _Shards:
    """Just enough of a Journal for the re-run check: each shard's entries from seq 1."""

    def __init__(self, shards: list[list[Entry]], shard: int = 0) -> None:
        self.shards, self.shard = shards, shard

    def for_shard(self, shard: int) -> _Shards:
        return _Shards(self.shards, shard)

    async def state(self) -> StreamState:
        entries = self.shards[self.shard]
        return StreamState(1, len(entries), len(entries), 0)

    async def get(self, seq: int) -> Entry | None:
        entries = self.shards[self.shard]
        return entries[seq - 1] if 0 < seq <= len(entries) else None


GENESIS = Entry(EntryType.GENESIS, 0, "provision")
SEEDED = Entry(EntryType.DATA, 0, SEED_NODE, b"x")
SEAL = Entry(EntryType.CHECKSUM, 0, SEED_NODE)
LEASE = Entry(EntryType.LEASE, 1, "n0")


def _seeded(*shards: list[Entry]) -> bool:
    return asyncio.run(_seeded_before(_Shards(list(shards)), len(shards)))  # type: ignore[arg-type]


def test_a_rerun_seeds_new_journals_skips_sealed_ones_and_refuses_a_seeding_cut_short() -> None:
    assert not _seeded([GENESIS], [GENESIS])
    assert _seeded([GENESIS, SEAL], [GENESIS, SEEDED, SEAL, LEASE])
    with pytest.raises(SnapshotError, match="shard 1 holds part of it"):
        _seeded([GENESIS, SEEDED, SEAL], [GENESIS, SEEDED])
    with pytest.raises(SnapshotError, match="shard 1 holds part of it or none"):
        _seeded([GENESIS, SEEDED, SEAL], [GENESIS])
    # A journal that moved on without a seeding is not "seeded": seeding refuses it with its reason.
    assert not _seeded([GENESIS, LEASE])


def test_provision_takes_a_locked_restore_sources_own_credentials(tmp_path: Path) -> None:
    password = tmp_path / "source.password"
    password.write_text("s3cret\n")
    args = build_parser().parse_args([
        "provision", "--cluster", "new", "--shards", "1", "--journal", "nats://j:1",
        "--restore-from-cluster", "old", "--restore-journal", "nats://old:1",
        "--restore-journal-user", "engram", "--restore-journal-password-file", str(password),
    ])
    source = journal_security_from_args(args, "restore-journal")
    assert source.connect_options() == {"user": "engram", "password": "s3cret"}
    assert not journal_security_from_args(args).enabled  # the new cluster's own journal is open


def _restore_security_given(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> JournalSecurity | None:
    """What `engram provision` reads the restore source with (None: the new cluster's own)."""
    seen: list[JournalSecurity | None] = []

    async def fake_provision(urls: list[str], request: ProvisionRequest, timeout: float, say: Any,
                             security: JournalSecurity, restore_security: JournalSecurity | None) -> None:
        seen.append(restore_security)

    monkeypatch.setattr(provision_cli, "provision", fake_provision)
    args = build_parser().parse_args(["provision", "--cluster", "new", "--shards", "1", *argv])
    assert args.func(args) == 0
    return seen[0]


def test_a_locked_cluster_reads_an_open_source_on_other_servers_without_its_own_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password, ca = tmp_path / "journal.password", tmp_path / "ca.pem"
    password.write_text("ours\n")
    ca.write_text("not read here\n")
    locked = ["--journal", "nats://j:1", "--journal-user", "engram", "--journal-password-file", str(password),
              "--journal-ca", str(ca), "--restore-from-cluster", "old"]
    # The source's servers are another cluster's: open unless its own credentials are given.
    assert _restore_security_given(monkeypatch, [*locked, "--restore-journal", "nats://old:1"]) == PLAIN
    # On the new cluster's own servers the source shares the journal, and its credentials.
    assert _restore_security_given(monkeypatch, [*locked, "--restore-journal", "nats://j:1"]) is None
    assert _restore_security_given(monkeypatch, locked) is None
    given = _restore_security_given(monkeypatch, [*locked, "--restore-journal", "nats://old:1",
                                                  "--restore-journal-ca", str(ca)])
    assert given == JournalSecurity(ca_file=str(ca))
