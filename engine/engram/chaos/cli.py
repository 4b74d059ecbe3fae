"""`engram chaos`: a workload under injected faults, then checks that nothing acknowledged was lost
and that every register history is linearizable. Exit code 1 when either fails, 2 when the run could not
be carried out. With --seeds, one run per seed on a fresh cluster, stopping at the first failure.
With --regions, writes in every region of a multi-region cluster under region faults, then checks
that the regions converge by last-writer-wins and lose nothing acknowledged (docs/multi-region.md)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from engram.binaries import BinaryNotFound
from engram.chaos.faults import ALL_KINDS, MIN_FAULT_INTERVAL, FaultKind
from engram.chaos.region_faults import ALL_REGION_KINDS, RegionFaultKind
from engram.chaos.region_runner import RegionChaosConfig
from engram.chaos.region_runner import run as run_regions
from engram.chaos.report import ChaosReport
from engram.chaos.runner import ChaosConfig, ChaosError, run
from engram.chaos.sweep import check_evidence_free, parse_seeds, sweep
from engram.chaos.workload import FinalReadFailed
from engram.platforms.local.cluster import LocalError


def _say(message: str) -> None:
    print(f"engram chaos: {message}", file=sys.stderr, flush=True)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give one or more names, comma-separated")
    return names


def _kinds(names: tuple[str, ...] | None, kinds: type[FaultKind] | type[RegionFaultKind]) -> tuple:
    """The fault kinds named (default: all of them); ValueError naming the choices."""
    if names is None:
        return tuple(kinds)
    try:
        return tuple(kinds(n) for n in names)
    except ValueError:
        where = " with --regions" if kinds is RegionFaultKind else ""
        raise ValueError(f"--faults: choose from {', '.join(kinds)}{where} (comma-separated)") from None


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not seconds >= MIN_FAULT_INTERVAL:  # `not >=` also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least {MIN_FAULT_INTERVAL:g} seconds, not {text}")
    return seconds


def _seeds(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Options of the single-region scenario that mean nothing with --regions (one writer per region,
# and the cluster's own faults): their argparse default is None, so that giving one is seen.
_NOT_WITH_REGIONS = (("--clients", "clients"), ("--keys", "keys"), ("--endpoint", "endpoint"),
                     ("--history", "history"), ("--reshard-every", "reshard_every"))


def _misused(args: argparse.Namespace) -> str:
    """Why the options cannot be used as given (empty when they can)."""
    if args.regions is not None:
        clash = [flag for flag, dest in _NOT_WITH_REGIONS if getattr(args, dest) is not None]
        if clash:
            return (f"{', '.join(clash)} cannot be used with --regions: it runs one writer per region "
                    "through the region's endpoint, on a local multi-region cluster, and keeps no history")
    if args.seeds is not None:
        clash = [f for f, v in (("--name", args.name), ("--dir", args.dir), ("--endpoint", args.endpoint),
                                ("--history", args.history)) if v is not None]
        if clash:
            return (f"--seeds starts a fresh cluster for every seed and keeps histories itself: "
                    f"drop {', '.join(clash)}")
    elif args.evidence is not None or args.keep_evidence:
        return "--evidence and --keep-evidence go with --seeds"
    return ""


def _sweep(args: argparse.Namespace, config: ChaosConfig | RegionChaosConfig) -> int:
    check_evidence_free(args.seeds, args.evidence, args.keep_evidence)

    def run_seed(seed: int, base: Path) -> ChaosReport:
        # The runner keeps every run's evidence; the sweep decides what to keep and moves it.
        say = lambda m: _say(f"seed {seed}: {m}")  # noqa: E731
        seeded = replace(config, seed=seed, keep_evidence=True)
        if isinstance(seeded, RegionChaosConfig):
            return run_regions(seeded, say, base)  # type: ignore[return-value]
        return run(seeded, say, base)

    result = sweep(args.seeds, run_seed, args.evidence, args.keep_evidence, _say)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.text())
    return result.exit_code


def handle(args: argparse.Namespace) -> int:
    """Run the scenario; the report (or JSON) goes to stdout, progress to stderr."""
    if why := _misused(args):
        _say(f"error: {why}")
        return 2
    try:
        config = _config(args)
        if args.seeds is not None:
            return _sweep(args, config)
        report = run(config, _say) if isinstance(config, ChaosConfig) else run_regions(config, _say)
    except (ChaosError, FinalReadFailed, LocalError, BinaryNotFound, ValueError) as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1


def _config(args: argparse.Namespace) -> ChaosConfig | RegionChaosConfig:
    """The run asked for; ValueError for settings it cannot take."""
    if args.regions is not None:
        return RegionChaosConfig(
            regions=args.regions, duration=args.duration, interval=args.fault_interval, seed=args.seed,
            kinds=_kinds(args.faults, RegionFaultKind), op_timeout=args.timeout, shards=args.shards,
            replicas=1 if args.replicas is None else args.replicas, lease=args.lease,
            snapshot_interval=args.snapshot_interval, snapshot_entries=args.snapshot_entries,
            name=args.name, dir=args.dir,
        )
    return ChaosConfig(
        duration=args.duration,
        clients=8 if args.clients is None else args.clients,
        keys=5 if args.keys is None else args.keys,
        seed=args.seed,
        faults=_kinds(args.faults, FaultKind),
        fault_interval=args.fault_interval,
        op_timeout=args.timeout,
        shards=args.shards,
        replicas=2 if args.replicas is None else args.replicas,
        lease=args.lease,
        snapshot_interval=args.snapshot_interval,
        snapshot_entries=args.snapshot_entries,
        name=args.name,
        dir=args.dir,
        endpoint=args.endpoint,
        history_path=args.history,
        reshard_every=args.reshard_every or 0.0,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `chaos` to the top-level `engram` parser."""
    p = subparsers.add_parser("chaos", help="inject faults under load and check nothing was lost",
                              description=__doc__)
    p.add_argument("--duration", type=float, default=60.0, metavar="SECONDS", help="(default: %(default)s)")
    p.add_argument("--regions", type=_names, metavar="R1,R2[,R3...]",
                   help="start (or, with --name/--dir, use) a local multi-region cluster of these regions, "
                        "write in every region and inject region faults (docs/multi-region.md)")
    p.add_argument("--clients", type=int, help="concurrent clients (default: 8; not with --regions)")
    p.add_argument("--keys", type=int, help="register keys (default: 5; not with --regions)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="fault victims and operation mix (default: random, printed)")
    seeds.add_argument("--seeds", type=_seeds, metavar="S,S|A-B",
                       help="one run per seed, each on a fresh cluster, stopping at the first failure")
    p.add_argument("--faults", type=_names, metavar="K,K",
                   help=f"among {', '.join(ALL_KINDS)} (default: all, in that order); with --regions among "
                        f"{', '.join(ALL_REGION_KINDS)} (default: all, in shuffled rounds)")
    p.add_argument("--fault-interval", "--interval", type=_interval, default=12.0, metavar="SECONDS",
                   help=f"time between faults, at least {MIN_FAULT_INTERVAL:g}; pauses and partitions are "
                        "shortened to end before the next fault (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="an operation unanswered this long has an unknown outcome (default: %(default)s)")
    p.add_argument("--shards", type=int, default=1, help="of the cluster started here (default: %(default)s)")
    p.add_argument("--reshard-every", type=float, metavar="SECONDS",
                   help="change the shard count online to --shards + 1 and back, every SECONDS, while "
                   "faults go on (default: never; not with --regions)")
    p.add_argument("--replicas", type=int, help="per shard (default: 2; with --regions 1)")
    p.add_argument("--lease", type=float, default=2.0, metavar="SECONDS",
                   help="leader lease of the cluster started here (default: %(default)s)")
    p.add_argument("--snapshot-interval", type=float, default=3600.0, metavar="SECONDS",
                   help="of the cluster started here: take a snapshot of each shard this often; "
                        "0: no schedule (default: %(default)s)")
    p.add_argument("--snapshot-entries", type=int, default=100_000, metavar="N",
                   help="of the cluster started here: take a snapshot once N journal entries follow the "
                        "newest; 0: no threshold (default: %(default)s)")
    p.add_argument("--name", help="use this running `engram local` cluster (with --dir); with --regions a "
                   "multi-region one, whose --counters and --ttls patterns give the counter and TTL keys")
    p.add_argument("--dir", help="the --dir the cluster given by --name was started with")
    p.add_argument("--endpoint", metavar="HOST:PORT", help="run the workload here; without --name no faults")
    p.add_argument("--history", metavar="PATH", help="save the operation history as JSON "
                   "(re-check with python -m engram.chaos.linearizability PATH)")
    p.add_argument("--evidence", metavar="DIR", help="with --seeds: where the failing run's cluster logs, "
                   "journal, history and report go (default: ./chaos-evidence-SEED; DIR/SEED per seed with "
                   "--keep-evidence)")
    p.add_argument("--keep-evidence", action="store_true",
                   help="with --seeds: keep passing runs' evidence too")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=handle)
    return p
