"""`engram bench`: the same workload against plain Valkey, fsync-always Valkey and Engram, side by side."""

from __future__ import annotations

import argparse
import json
import sys

from engram.bench.runner import GENERATORS, TARGETS, Bench, BenchConfig
from engram.bench.workloads import WORKLOADS, LoadSpec
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


def handle(args: argparse.Namespace) -> int:
    """Run the benchmark; the table (or JSON) goes to stdout, progress to stderr."""
    try:
        spec = LoadSpec(
            clients=args.clients,
            value_size=args.value_size,
            pipeline=args.pipeline,
            keyspace=args.keyspace,
            requests=None if args.seconds else args.requests,
            seconds=args.seconds,
        )
        config = BenchConfig(
            spec=spec,
            workloads=args.workloads,
            targets=args.targets,
            shards=args.shards,
            replicas=args.replicas,
            generator=args.generator,
            engram_endpoint=args.endpoint,
            seed=args.seed,
            processes=args.processes,
        )
        report = Bench(config, _say).run()
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
    p.add_argument("--workloads", type=_names(tuple(WORKLOADS)), default=tuple(WORKLOADS), metavar="W,W",
                   help=f"among {', '.join(WORKLOADS)} (default: all)")
    p.add_argument("--targets", type=_names(TARGETS), default=TARGETS, metavar="T,T",
                   help=f"among {', '.join(TARGETS)} (default: all; ratios need valkey)")
    p.add_argument("--value-size", type=int, default=100, metavar="BYTES", help="(default: %(default)s)")
    p.add_argument("--clients", type=int, default=50, help="concurrent connections (default: %(default)s)")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--requests", type=int, default=100_000, help="per workload and target "
                       "(default: %(default)s)")
    bound.add_argument("--seconds", type=float, help="run each workload this long instead of --requests")
    p.add_argument("--pipeline", type=int, default=1, help="requests per round trip (default: %(default)s)")
    p.add_argument("--keyspace", type=int, default=10_000, help="distinct keys (default: %(default)s)")
    p.add_argument("--shards", type=int, default=1, help="shards of every target (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=2, help="Engram replicas per shard (default: %(default)s)")
    p.add_argument("--endpoint", metavar="HOST:PORT",
                   help="measure this running Engram cluster instead of starting a local one")
    p.add_argument("--generator", choices=GENERATORS, default="auto",
                   help="auto: valkey-benchmark/redis-benchmark where it can express the workload, "
                        "else the Python generator (default: %(default)s)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="Python generator processes (default: one per core)")
    p.add_argument("--seed", type=int, default=0, help="Python generator key choice (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=handle)
    return p
