"""`engram provision`: create a cluster's journal streams and metadata, once, at its creation, and
seed it from RDB files (--restore-from) or another cluster's snapshots (--restore-from-cluster).

Exit codes: 0 provisioned (or already, under the same id); 1 the journal (or the restore source's)
was not available in time (retry); 2 invalid arguments; 3 retrying cannot help: the name is held by
another cluster id, or the restore failed (a file that is not an RDB, a source cluster that is not
there, has a shard without a verified snapshot, or is this cluster itself)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from engram.journal.security import JournalSecurity, add_journal_security_args, journal_security_from_args
from engram.orchestration.provision import ProvisionError, ProvisionRequest, new_cluster_id, provision


def _say(message: str) -> None:
    print(f"engram provision: {message}", file=sys.stderr, flush=True)


def _urls(text: str) -> list[str]:
    return [u.strip() for u in text.split(",") if u.strip()]


def _restore_security(args: argparse.Namespace, urls: list[str]) -> JournalSecurity | None:
    """The restore source's credentials; None: the new cluster's own (the source is on its journal)."""
    source = journal_security_from_args(args, "restore-journal")
    other_servers = set(_urls(args.restore_journal)) - set(urls)
    # Other journal servers are another cluster's: locked with its own credentials, or open (no flags),
    # never with ours (a locked new cluster restored from an open one would dial it with TLS).
    return source if source.enabled or other_servers else None


def handle(args: argparse.Namespace) -> int:
    urls = _urls(args.journal)
    try:
        request = ProvisionRequest(args.cluster, args.cluster_id or new_cluster_id(), args.shards,
                                   args.journal_replicas, restore_from=tuple(args.restore_from),
                                   restore_cluster=args.restore_from_cluster,
                                   restore_journal=tuple(_urls(args.restore_journal)))
        security = journal_security_from_args(args)
        restore_security = _restore_security(args, urls)
        asyncio.run(provision(urls, request, args.timeout, _say, security, restore_security))
    except ProvisionError as exc:
        _say(f"error: {exc}")
        return 3 if exc.permanent else 1
    except ValueError as exc:
        _say(f"error: {exc}")
        return 2
    result = {"cluster": request.cluster, "cluster_id": request.cluster_id, "shards": request.shards}
    print(json.dumps(result) if args.json else f"provisioned {request.cluster} (id {request.cluster_id})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("provision", help="create a new cluster's journal streams and metadata",
                              description=__doc__)
    p.add_argument("--cluster", required=True, help="the cluster's name")
    p.add_argument("--cluster-id", default="", help="its unique id (default: a new one, printed)")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--journal-replicas", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--journal", required=True, metavar="URL[,URL]", help="journal server URLs (nats://...)")
    add_journal_security_args(p)
    restore = p.add_mutually_exclusive_group()
    restore.add_argument("--restore-from", action="append", default=[], metavar="PATH",
                         help="seed the new cluster with the keys of this RDB file; repeatable")
    restore.add_argument("--restore-from-cluster", default="", metavar="NAME",
                         help="seed the new cluster from the newest verified snapshot of every shard of "
                         "cluster NAME (keys go to the shards owning their slots, any shard count)")
    p.add_argument("--restore-journal", default="", metavar="URL[,URL]",
                   help="the journal servers of the --restore-from-cluster cluster (default: --journal); "
                   "other servers than --journal are read with the --restore-journal-* credentials, or "
                   "as an open journal without them")
    add_journal_security_args(p, "restore-journal", "the restore source's journal")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the journal (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=handle)
    return p
