"""`engram bench`: the same workload against plain Valkey, fsync-always Valkey and Engram, side by side."""

from __future__ import annotations

import argparse
import json
import sys

from engram.bench.runner import ALL_TARGETS, GENERATORS, TARGETS, Bench, BenchConfig
from engram.bench.suites import SUITE_SECONDS, SUITES
from engram.bench.workloads import DEFAULT_WORKLOADS, WORKLOADS, LoadSpec
from engram.binaries import BinaryNotFound
from engram.platforms.local.cluster import LocalError


def _say(message: str) -> None:
    print(f"engram bench: {message}", file=sys.stderr, flush=True)


def _names(choices: tuple[str, ...]) -> type:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated)")
        return names

    return parse  # type: ignore[return-value]


# Options that shape the load of a run without a suite; a suite gives each row its own.
_ROW_OPTIONS = ("workloads", "clients", "pipeline", "in_flight", "shards", "generator")
_ROW_DEFAULTS = {"workloads": DEFAULT_WORKLOADS, "clients": 50, "pipeline": 1, "in_flight": 1, "shards": 1,
                 "generator": "auto"}


def _bound(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """requests or seconds: as given; else a suite's rows run SUITE_SECONDS each, a plain run 100,000."""
    if args.seconds is not None:
        return None, args.seconds
    if args.requests is not None:
        return args.requests, None
    return (None, SUITE_SECONDS) if args.suite else (100_000, None)


def _config(args: argparse.Namespace) -> BenchConfig:
    if args.suite:
        given = [o for o in _ROW_OPTIONS if getattr(args, o) is not None and o != "generator"]
        if given:
            flags = ", ".join("--" + o.replace("_", "-") for o in given)
            raise ValueError(f"--suite {args.suite} sets each row's load itself; drop {flags}")
    row = {o: _ROW_DEFAULTS[o] if getattr(args, o) is None else getattr(args, o) for o in _ROW_OPTIONS}
    requests, seconds = _bound(args)
    spec = LoadSpec(
        clients=row["clients"],
        value_size=args.value_size,
        pipeline=row["pipeline"],
        keyspace=args.keyspace,
        requests=requests,
        seconds=seconds,
        in_flight=row["in_flight"],
    )
    return BenchConfig(
        spec=spec,
        workloads=row["workloads"],
        targets=args.targets if args.targets else (("valkey", "engram") if args.suite else TARGETS),
        shards=row["shards"],
        replicas=args.replicas,
        journal_sync=args.journal_sync,
        generator=row["generator"],
        engram_endpoint=args.endpoint,
        seed=args.seed,
        processes=args.processes,
        suite=args.suite,
    )


def handle(args: argparse.Namespace) -> int:
    """Run the benchmark; the table (or JSON) goes to stdout, progress to stderr."""
    try:
        report = Bench(_config(args), _say).run()
    except (ValueError, RuntimeError, BinaryNotFound, LocalError) as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 1
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `bench` to the top-level `engram` parser."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark Engram against plain and fsync-always Valkey",
        description=__doc__,
    )
    p.add_argument("--suite", choices=tuple(SUITES),
                   help="a fixed set of rows, each with its own load, in one table; datapath: SET/GET at 50 "
                        "clients, SET at 256, SET/GET at 4 clients x pipeline 16, 3 INCR : 1 GET on one "
                        "connection with 1,000 in flight, and the valkey-glide cluster client with 500 in "
                        "flight against 3 shards (needs valkey-glide). Targets default to valkey,engram; "
                        f"rows run {SUITE_SECONDS:g}s each unless --seconds/--requests")
    p.add_argument("--workloads", type=_names(tuple(WORKLOADS)), metavar="W,W",
                   help=f"among {', '.join(WORKLOADS)} (default: {','.join(DEFAULT_WORKLOADS)})")
    p.add_argument("--targets", type=_names(ALL_TARGETS), metavar="T,T",
                   help=f"among {', '.join(ALL_TARGETS)} (default: {','.join(TARGETS)}; ratios need valkey)")
    p.add_argument("--value-size", type=int, default=100, metavar="BYTES", help="(default: %(default)s)")
    p.add_argument("--clients", type=int, help="concurrent connections, or GLIDE clients (default: 50)")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--requests", type=int, help="per workload and target (default: 100000)")
    bound.add_argument("--seconds", type=float, help="run each workload this long instead of --requests")
    p.add_argument("--pipeline", type=int,
                   help="requests sent together, then all their replies awaited (default: 1)")
    p.add_argument("--in-flight", type=int, metavar="N",
                   help="requests each connection keeps outstanding, one sent as each reply arrives, as "
                        "valkey-glide multiplexes (default: 1); uses the multiplexing Python generator")
    p.add_argument("--keyspace", type=int, default=10_000, help="distinct keys (default: %(default)s)")
    p.add_argument("--shards", type=int, help="shards of every target (default: 1)")
    p.add_argument("--replicas", type=int, default=2, help="Engram replicas per shard (default: %(default)s)")
    p.add_argument("--journal-sync", default="always", metavar="always|DURATION",
                   help="when the Engram target's journal servers fsync (docs/durability.md; "
                        "default: %(default)s)")
    p.add_argument("--endpoint", metavar="HOST:PORT",
                   help="measure this running Engram cluster instead of starting a local one")
    p.add_argument("--generator", choices=GENERATORS,
                   help="auto: valkey-benchmark/redis-benchmark where it can express the workload, else the "
                        "Python generators; python: never the tool; glide: the valkey-glide client "
                        "(GlideClusterClient against a cluster), --in-flight requests per client "
                        "(default: auto)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="Python generator processes (default: one per core)")
    p.add_argument("--seed", type=int, default=0, help="Python generator key choice (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=handle)
    return p
