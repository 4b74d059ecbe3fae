"""`engram chaos`: a workload under injected faults, then checks that nothing acknowledged was lost
and that every register history is linearizable. Exit code 1 when either fails, 2 when the run could not
be carried out."""

from __future__ import annotations

import argparse
import json
import sys

from engram.binaries import BinaryNotFound
from engram.chaos.faults import ALL_KINDS, FaultKind
from engram.chaos.runner import ChaosConfig, ChaosError, run
from engram.chaos.workload import FinalReadFailed
from engram.platforms.local.cluster import LocalError


def _say(message: str) -> None:
    print(f"engram chaos: {message}", file=sys.stderr, flush=True)


def _kinds(text: str) -> tuple[FaultKind, ...]:
    try:
        return tuple(FaultKind(k.strip()) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(ALL_KINDS)} (comma-separated)") from None


def handle(args: argparse.Namespace) -> int:
    """Run the scenario; the report (or JSON) goes to stdout, progress to stderr."""
    try:
        config = ChaosConfig(
            duration=args.duration,
            clients=args.clients,
            keys=args.keys,
            seed=args.seed,
            faults=args.faults,
            fault_interval=args.fault_interval,
            op_timeout=args.timeout,
            shards=args.shards,
            replicas=args.replicas,
            lease=args.lease,
            name=args.name,
            dir=args.dir,
            endpoint=args.endpoint,
            history_path=args.history,
        )
        report = run(config, _say)
    except (ChaosError, FinalReadFailed, LocalError, BinaryNotFound, ValueError) as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `chaos` to the top-level `engram` parser."""
    p = subparsers.add_parser("chaos", help="inject faults under load and check nothing was lost",
                              description=__doc__)
    p.add_argument("--duration", type=float, default=60.0, metavar="SECONDS", help="(default: %(default)s)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    p.add_argument("--keys", type=int, default=5, help="register keys (default: %(default)s)")
    p.add_argument("--seed", type=int, help="fault victims and operation mix (default: random, printed)")
    p.add_argument("--faults", type=_kinds, default=ALL_KINDS, metavar="K,K",
                   help=f"among {', '.join(ALL_KINDS)} (default: all, in that order)")
    p.add_argument("--fault-interval", type=float, default=12.0, metavar="SECONDS",
                   help="time between faults (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="an operation unanswered this long has an unknown outcome (default: %(default)s)")
    p.add_argument("--shards", type=int, default=1, help="of the cluster started here (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=2, help="per shard (default: %(default)s)")
    p.add_argument("--lease", type=float, default=2.0, metavar="SECONDS",
                   help="leader lease of the cluster started here (default: %(default)s)")
    p.add_argument("--name", help="use this running `engram local` cluster (with --dir)")
    p.add_argument("--dir", help="the --dir the cluster given by --name was started with")
    p.add_argument("--endpoint", metavar="HOST:PORT", help="run the workload here; without --name no faults")
    p.add_argument("--history", metavar="PATH", help="save the operation history as JSON "
                   "(re-check with python -m engram.chaos.linearizability PATH)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=handle)
    return p
