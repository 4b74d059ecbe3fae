"""`engram reshard`: change a running cluster's shard count, moving slots online (docs/scaling.md).

It adds the journal streams of new shards, waits until every shard has a primary (the platform
starts the new shards' nodes), moves slots in chunks while clients keep working, and, when
shrinking, removes the drained shards' streams once their nodes are gone. It is resumable: run the
same command again after any failure and it continues the recorded plan.

Exit codes: 0 done; 1 failed (retry: the command resumes); 2 invalid arguments."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict

from engram.journal.security import add_journal_security_args, journal_security_from_args
from engram.resharding.mover import MoveOptions
from engram.resharding.record import ReshardRecord
from engram.resharding.run import MAX_SHARDS, ReshardError, ReshardOptions, reshard


def _say(message: str) -> None:
    print(f"engram reshard: {message}", file=sys.stderr, flush=True)


class _Progress:
    """A line per phase and per chunk of slots moved (a Job's log is its progress)."""

    def __init__(self) -> None:
        self.last = ("", -1)

    def __call__(self, record: ReshardRecord) -> None:
        step = (record.phase, record.slots_moved)
        if step != self.last:
            self.last = step
            _say(record.summary())


def handle(args: argparse.Namespace) -> int:
    if not 1 <= args.shards <= MAX_SHARDS:
        _say(f"error: --shards must be between 1 and {MAX_SHARDS}, not {args.shards}")
        return 2
    urls = [u.strip() for u in args.journal.split(",") if u.strip()]
    options = ReshardOptions(
        move=MoveOptions(max_keys_per_second=args.max_keys_per_second, username=args.user,
                         password=_password(args), tls_ca_file=args.tls_ca),
        chunk_slots=args.chunk_slots, wait_primaries=args.wait, wait_removed=args.wait,
    )
    try:
        security = journal_security_from_args(args)
        record = asyncio.run(reshard(urls, args.cluster, args.shards, security=security,
                                     progress=_Progress(), options=options))
    except ReshardError as exc:
        _say(f"error: {exc}")
        return 1
    except ValueError as exc:
        _say(f"error: {exc}")
        return 2
    except Exception as exc:  # the journal or a node went away: resumable
        _say(f"error: {exc.__class__.__name__}: {exc}; run the same command again to resume")
        return 1
    print(json.dumps(asdict(record)) if args.json else record.summary())
    return 0


def _password(args: argparse.Namespace) -> str:
    if not args.password_file:
        return ""
    with open(args.password_file, encoding="utf-8") as f:
        return f.read().strip()


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("reshard", help="change a running cluster's shard count online",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", required=True, help="the cluster's name")
    p.add_argument("--shards", type=int, required=True, help="the shard count to reach")
    p.add_argument("--journal", required=True, metavar="URL[,URL]", help="journal server URLs (nats://...)")
    add_journal_security_args(p)
    p.add_argument("--max-keys-per-second", type=int, default=MoveOptions.max_keys_per_second,
                   help="bound on keys moved per second, 0 for none (default: %(default)s)")
    p.add_argument("--chunk-slots", type=int, default=ReshardOptions.chunk_slots,
                   help="slots moved per step (default: %(default)s)")
    p.add_argument("--wait", type=float, default=ReshardOptions.wait_primaries, metavar="SECONDS",
                   help="how long to wait for new shards' primaries and removed shards' nodes "
                   "(default: %(default)s)")
    p.add_argument("--user", default="", help="the Valkey user MIGRATE authenticates as on targets")
    p.add_argument("--password-file", default="", metavar="PATH", help="that user's password")
    p.add_argument("--tls-ca", default="", metavar="FILE",
                   help="the CA of the nodes' client certificates: reach their client ports over TLS, "
                   "for a cluster that serves clients over TLS")
    p.add_argument("--json", action="store_true", help="print the final record as JSON")
    p.set_defaults(func=handle)
    return p
