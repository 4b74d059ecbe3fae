"""`python -m engram.snapshots`: one snapshot cycle of one shard, in its own process.

A node runs it as a child so that the replay's CPU and the scratch Valkey's memory never stall
the node's own event loop; exit code 0 when a verified snapshot covers the journal's last entry.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from engram.journal.client import Journal
from engram.journal.errors import JournalError
from engram.journal.security import add_journal_security_args, journal_security_from_args
from engram.multiregion.holdback import Copied
from engram.snapshots.cycle import snapshot_shard
from engram.snapshots.record import SnapshotError
from engram.snapshots.regions import add_region_args, copies_of_linked_regions, linked_from_args
from engram.snapshots.store import SnapshotStore

log = logging.getLogger("engram.snapshots")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engram.snapshots", description=__doc__)
    parser.add_argument("--journal", required=True, help="journal server URLs, comma separated")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--cluster-id", required=True)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where scratch Valkeys keep their files")
    parser.add_argument("--log-level", default="warning")
    add_journal_security_args(parser)
    add_region_args(parser)
    args = parser.parse_args(argv)
    try:
        linked = linked_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s snapshot-s{args.shard} %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args, linked))
    except (JournalError, SnapshotError) as exc:
        log.error("snapshot of shard %d failed: %s", args.shard, exc)
        return 1
    return 0


async def _run(args: argparse.Namespace, linked_regions: dict[str, str]) -> None:
    journal = await Journal.connect(args.journal.split(","), args.cluster, args.shard,
                                    name=f"{args.cluster}-snapshot-{args.shard}",
                                    security=journal_security_from_args(args))
    try:
        store = await SnapshotStore.open(journal.jetstream, args.cluster, args.cluster_id)
        linked = None
        if linked_regions:
            async def linked() -> list[Copied]:
                return await copies_of_linked_regions(journal, args.region, args.cluster, linked_regions)
        result = await snapshot_shard(journal, store, args.cluster_id, keep=args.keep, workdir=args.workdir,
                                      progress=log.info, linked=linked)
        log.info("snapshot of shard %d at entry %d verified; journal kept from entry %s", args.shard,
                 result.record.seq, result.truncated_below or 1)
    finally:
        await journal.close()


if __name__ == "__main__":
    sys.exit(main())
