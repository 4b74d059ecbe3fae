"""`engram local ...`: run an Engram cluster as local processes (docs/local-platform.md)."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from engram.binaries import BinaryNotFound
from engram.cli.status_table import print_status
from engram.platforms.local import cluster, multi_region, regions, replicas, scale, upgrade
from engram.platforms.local.network import NetworkError
from engram.platforms.local.plan import ClusterSpec, PlanError
from engram.platforms.local.ports import PortBusy
from engram.platforms.local.probe import FailoverFailed
from engram.platforms.local.state import default_base_dir
from engram.resharding.mover import MoveOptions
from engram.resharding.record import ReshardRecord, format_duration
from engram.resharding.run import ReshardOptions
from engram.snapshots.cycle import DEFAULT_KEEP

_ERRORS = (cluster.LocalError, BinaryNotFound, PortBusy, PlanError, FailoverFailed, NetworkError, ValueError)
_SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP, "CONT": signal.SIGCONT, "TERM": signal.SIGTERM}


def _say(message: str) -> None:
    print(f"engram: {message}", file=sys.stderr, flush=True)


def _fail(message: str) -> int:
    _say(f"error: {message}")
    return 1


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the platform's errors into one clear line on stderr and exit code 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _ERRORS as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            return _fail("interrupted")

    return run


def _regions(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def _zones(text: str) -> tuple[str, ...]:
    zones = tuple(z.strip() for z in text.split(",") if z.strip())
    if not zones:
        raise argparse.ArgumentTypeError("give at least one zone, e.g. a,b,c")
    return zones


@_guarded
def cmd_up(args: argparse.Namespace) -> int:
    spec = ClusterSpec(
        name=args.name,
        shards=args.shards,
        replicas=args.replicas,
        zones=args.zones,
        base_port=args.port,
        lease_seconds=args.lease,
        snapshot_interval=args.snapshot_interval,
        snapshot_entries=args.snapshot_entries,
        restore_from=tuple(args.restore_from),
        restore_cluster=args.restore_from_cluster,
        log_level=args.log_level,
        node_command=tuple(shlex.split(args.node_command or "")),
        netns=args.netns,
        journal_sync=args.journal_sync,
        users_file=args.users or "",
        rebalance=not args.no_rebalance,
        rebalance_settle=args.rebalance_settle,
        tls=args.tls,
        region_counters=tuple(args.counters),
        region_ttls=tuple(args.ttls),
    )
    for flag, given in (("--counters", args.counters), ("--ttls", args.ttls)):
        if given and not args.regions:
            _say(f"error: {flag} needs --regions: it says how keys replicate between regions")
            return 2
    if args.regions:
        return _up_regions(args, spec)
    try:
        doc = cluster.up(spec, args.dir, timeout=args.timeout, progress=_say)
    except cluster.AlreadyExists:
        if not args.exist_ok:
            raise
        doc = cluster.status(args.dir, args.name)
        _say(f"cluster {args.name} is already running; its endpoint is {doc['endpoint']}")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_status(doc)
    return 0


def _up_regions(args: argparse.Namespace, spec: ClusterSpec) -> int:
    """`up --regions`: one cluster per region, linked (platforms/local/multi_region.py)."""
    try:
        doc = multi_region.up(spec, args.regions, args.dir, timeout=args.timeout, progress=_say)
    except cluster.AlreadyExists:
        if not args.exist_ok:
            raise
        doc = multi_region.status(args.dir, args.name)
        where = ", ".join(f"{r} at {d['endpoint']}" for r, d in doc["regions"].items() if d["running"])
        _say(f"multi-region cluster {args.name} is already running; its endpoints: {where}")
    _print_regions(doc, args.json)
    return 0


def _print_regions(doc: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    for region, status_doc in doc["regions"].items():
        if not status_doc.get("running", True):
            print(f"== region {region}: cluster {status_doc['name']} is down: {status_doc['error']}\n")
            continue
        print(f"== region {region}: cluster {status_doc['name']}, endpoint {status_doc['endpoint']}")
        print_status(status_doc)
        if lines := regions.lag_lines(region, status_doc["lag"]):
            print("\n" + "\n".join(lines))
        print()
    if cut := [f"{a}-{b}" for link in doc.get("links", []) if link["cut"] for a, b in [link["regions"]]]:
        print(f"links cut (`engram local heal` heals them): {', '.join(cut)}")


@_guarded
def cmd_status(args: argparse.Namespace) -> int:
    if regions.load_record(args.dir, args.name) is not None:
        _print_regions(multi_region.status(args.dir, args.name), args.json)
        return 0
    doc = cluster.status(args.dir, args.name)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_status(doc)
        record = ReshardRecord(**doc["resharding"]) if doc.get("resharding") else None
        if record is not None and record.phase != "done":
            print(f"\nresharding {record.id}: {scale.progress_line(record)}"
                  + (f"\n  error: {record.error}" if record.error else ""))
        if mixed := upgrade.mixed_versions(doc):
            print(f"\n{mixed}")
    return 0


@_guarded
def cmd_down(args: argparse.Namespace) -> int:
    if regions.load_record(args.dir, args.name) is not None:
        multi_region.down(args.dir, args.name, keep_data=args.keep_data, progress=_say)
        _say(f"multi-region cluster {args.name} stopped" + (" (data kept)" if args.keep_data else ""))
        return 0
    cluster.down(args.dir, args.name, keep_data=args.keep_data, progress=_say)
    _say(f"cluster {args.name} stopped" + (" (data kept)" if args.keep_data else ""))
    return 0


@_guarded
def cmd_kill(args: argparse.Namespace) -> int:
    _say(cluster.kill(args.dir, args.name, args.target, _SIGNALS[args.signal]))
    return 0


def _one_zone(args: argparse.Namespace) -> str:
    if len(args.where) != 1:
        raise cluster.LocalError(f"{args.name} is not a multi-region cluster: name one zone to "
                                 f"{args.local_command}, not {' '.join(args.where) or 'none'}")
    return str(args.where[0])


@_guarded
def cmd_partition(args: argparse.Namespace) -> int:
    if regions.load_record(args.dir, args.name) is not None:
        doc = multi_region.partition(args.dir, args.name, args.where, args.timeout, _say)
        _print_regions(doc, args.json)
        return 0
    _say(cluster.partition(args.dir, args.name, _one_zone(args)))
    return 0


@_guarded
def cmd_heal(args: argparse.Namespace) -> int:
    if regions.load_record(args.dir, args.name) is not None:
        _print_regions(multi_region.heal(args.dir, args.name, args.where, args.timeout, _say), args.json)
        return 0
    _say(cluster.heal(args.dir, args.name, _one_zone(args)))
    return 0


@_guarded
def cmd_failover(args: argparse.Namespace) -> int:
    _say(cluster.failover(args.dir, args.name, shard=args.shard, to=args.to, timeout=args.timeout))
    return 0


@_guarded
def cmd_snapshot(args: argparse.Namespace) -> int:
    if args.export:
        if args.keep is not None:
            return _fail("--keep applies to taking snapshots; --export takes none")
        for line in cluster.export_snapshots(args.dir, args.name, args.export, shard=args.shard):
            print(line, flush=True)
        return 0
    keep = DEFAULT_KEEP if args.keep is None else args.keep
    for line in cluster.snapshot(args.dir, args.name, shard=args.shard, keep=keep, say=_say):
        _say(line)
    return 0


class _ProgressLine:
    """Reshard progress on stderr: one line redrawn in place on a terminal, else a line per phase and
    at most one every LOG_EVERY seconds (logs and CI output stay short)."""

    LOG_EVERY = 5.0
    REDRAW_EVERY = 0.2

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.phase = ""
        self.shown_at = 0.0
        self.width = 0

    def __call__(self, record: ReshardRecord) -> None:
        now = time.monotonic()
        changed = record.phase != self.phase
        if not changed and now - self.shown_at < (self.REDRAW_EVERY if self.tty else self.LOG_EVERY):
            return
        self.phase, self.shown_at = record.phase, now
        text = f"engram: {scale.progress_line(record)}"
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Leave the redrawn line in place, so later messages start on a line of their own."""
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0

    def say(self, message: str) -> None:
        self.end()
        _say(message)


def cmd_scale(args: argparse.Namespace) -> int:
    """Like _guarded, and a usage error (the shard count the cluster already has) exits 2."""
    if args.replicas is not None:
        return _scale_replicas(args)
    if regions.load_record(args.dir, args.name) is not None:
        _say(f"error: {args.name} is a multi-region cluster: its regions keep the same shards (an inbound "
             "stream copies one shard, and the module refuses MIGRATE in region mode), so resharding it "
             "is not built; --replicas changes every region")
        return 2
    line = _ProgressLine()
    try:
        password = Path(args.password_file).read_text().strip() if args.password_file else ""
        doc = scale.scale(args.dir, args.name, args.shards, max_keys_per_second=args.max_keys_per_second,
                          chunk_slots=args.chunk_slots,
                          user=args.user, password=password, progress=line, say=line.say)
    except scale.ScaleRefused as exc:
        line.end()
        _say(f"error: {exc}")
        return 2
    except (*_ERRORS, OSError) as exc:  # OSError: the password file
        line.end()
        return _fail(str(exc))
    except KeyboardInterrupt:
        line.end()
        return _fail("interrupted; run the same command again to resume")
    line.end()
    record = doc.get("resharding") or {}
    if record:
        took = format_duration(record["updated"] - record["started"])
        count = f"{doc['shards']} shard" + ("s" if doc["shards"] > 1 else "")
        _say(f"cluster {args.name} has {count}: {record['slots_moved']} slots and "
             f"{record['keys_moved']} keys moved in {took}")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_status(doc)
    return 0


def _scale_replicas(args: argparse.Namespace) -> int:
    """`scale --replicas`: a count the cluster cannot have, or options of --shards, exit 2."""
    moving = [flag for flag, value in (("--max-keys-per-second", args.max_keys_per_second),
                                       ("--chunk-slots", args.chunk_slots), ("--user", args.user),
                                       ("--password-file", args.password_file)) if value]
    try:
        if moving:
            raise scale.ScaleRefused(f"{', '.join(moving)} tune moving slots, which --shards does; "
                                     "--replicas moves none")
        if regions.load_record(args.dir, args.name) is not None:
            # Each region in turn: the other regions keep serving while one changes.
            def one(cluster_name: str, say: Callable[[str], None]) -> object:
                return replicas.scale_replicas(args.dir, cluster_name, args.replicas, timeout=args.timeout,
                                               say=say)

            _print_regions(multi_region.each_region(args.dir, args.name, one, _say), args.json)
            return 0
        doc = replicas.scale_replicas(args.dir, args.name, args.replicas, timeout=args.timeout, say=_say)
    except scale.ScaleRefused as exc:
        _say(f"error: {exc}")
        return 2
    except _ERRORS as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command again to resume")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_status(doc)
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Like _guarded, and an interruption says how to resume."""
    try:
        target = upgrade.check_target(args.node_command, args.valkey_server)
        if regions.load_record(args.dir, args.name) is not None:
            def one(cluster_name: str, say: Callable[[str], None]) -> object:
                return upgrade.upgrade(args.dir, cluster_name, target, timeout=args.timeout, say=say)

            _print_regions(multi_region.each_region(args.dir, args.name, one, _say), args.json)
            return 0
        doc = upgrade.upgrade(args.dir, args.name, target, timeout=args.timeout, say=_say)
    except _ERRORS as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command again to resume")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_status(doc)
    return 0


def _shard_count(text: str) -> int:
    try:
        return scale.check_shards(int(text))
    except ValueError as exc:  # ScaleRefused is a LocalError, not a ValueError: only int() lands here
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exc
    except scale.ScaleRefused as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--shards ")) from exc


def _positive(text: str) -> int:
    value = _not_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a whole number, 1 or more, got 0")
    return value


def _not_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    """Add `local` and its subcommands to the top-level parser."""
    local = commands.add_parser("local", help="run a cluster as local processes")
    sub = local.add_subparsers(dest="local_command", required=True, metavar="SUBCOMMAND")

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("name", metavar="NAME", help="the cluster's name")
        p.add_argument(
            "--dir",
            default=str(default_base_dir()),
            metavar="DIR",
            help="where clusters keep state, data and logs (default: %(default)s)",
        )
        p.set_defaults(func=handler)
        return p

    up = add("up", cmd_up, "start a cluster under a background supervisor; returns once it serves")
    up.add_argument("--shards", type=int, default=1, help="number of shards (default: %(default)s)")
    up.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="replicas per shard besides the primary (default: %(default)s)",
    )
    up.add_argument(
        "--zones",
        type=_zones,
        default=("a", "b", "c"),
        metavar="A,B,C",
        help="zones; one journal server per zone (default: a,b,c)",
    )
    up.add_argument(
        "--regions", type=_regions, default=(), metavar="R1,R2",
        help="a multi-region cluster: one full cluster per region, named NAME-<region>, each journal its "
        "own JetStream domain, linked by leaf nodes; every region takes writes (docs/multi-region.md)",
    )
    up.add_argument(
        "--counters", action="append", default=[], metavar="PATTERN",
        help="with --regions: keys matching this glob are additive counters, whose INCRBYs from every "
        "region add up instead of the last one winning (repeatable; docs/multi-region.md)",
    )
    up.add_argument(
        "--ttls", action="append", default=[], metavar="PATTERN",
        help="with --regions: strings whose keys match this glob may have TTLs (SET EX, EXPIRE, "
        "PERSIST), which replicate with their value and expire in every region (repeatable)",
    )
    up.add_argument(
        "--port",
        type=int,
        default=None,
        metavar="BASE",
        help="endpoint port; node client ports, journal ports and node control ports follow it "
        "(docs/local-platform.md; default: the endpoint on 6379 when it is free, every other port a "
        "free one)",
    )
    up.add_argument(
        "--lease", type=float, default=2.0, metavar="SECONDS", help="leader lease (default: %(default)s)"
    )
    up.add_argument(
        "--journal-sync", default="always", metavar="always|DURATION",
        help="when journal servers fsync: always, before a write is acknowledged, or every DURATION "
        "(e.g. 100ms): faster, and a write is then acknowledged once a quorum of zones holds it in "
        "memory (docs/durability.md; default: %(default)s)",
    )
    up.add_argument(
        "--tls", action="store_true",
        help="lock the journal: TLS to and between journal servers, with the cluster's own CA, and a "
        "password only the cluster's processes know (docs/security.md)",
    )
    up.add_argument(
        "--no-rebalance", action="store_true",
        help="leave primaries where failovers put them; by default the supervisor moves them back to an "
        "even spread over zones with planned switchovers once the cluster has settled",
    )
    up.add_argument(
        "--rebalance-settle", type=float, default=30.0, metavar="SECONDS",
        help="rebalance only once no node's role has changed for this long (default: %(default)s)",
    )
    up.add_argument(
        "--exist-ok", action="store_true",
        help="when a cluster of this name is already running, show where it serves and succeed",
    )
    up.add_argument(
        "--users", metavar="FILE",
        help="users declared in Valkey's ACL file format (`user NAME RULES...` a line); every node "
        "applies them and reads the file again when it changes; clients cannot change them "
        "(docs/security.md)",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="give up if the cluster does not serve within this time (default: %(default)s)",
    )
    up.add_argument(
        "--snapshot-interval", type=float, default=3600.0, metavar="SECONDS",
        help="take a snapshot of each shard this often; 0: no schedule (default: %(default)s)",
    )
    up.add_argument(
        "--snapshot-entries", type=int, default=100_000, metavar="N",
        help="take a snapshot once N journal entries follow the newest; 0: no threshold "
        "(default: %(default)s)",
    )
    restore = up.add_mutually_exclusive_group()
    restore.add_argument(
        "--restore-from", action="append", default=[], metavar="RDB",
        help="seed the new cluster with the keys of this RDB file (a snapshot or Valkey's dump.rdb); "
        "repeatable; keys go to the shards that own their slots",
    )
    restore.add_argument(
        "--restore-from-cluster", default="", metavar="OTHER",
        help="seed the new cluster from the newest verified snapshot of every shard of OTHER, a running "
        "cluster under the same --dir; keys go to the shards that own their slots",
    )
    up.add_argument("--log-level", default="warning", help="node log level (default: %(default)s)")
    up.add_argument(
        "--node-command",
        metavar="CMD",
        help="run each node as `CMD --config PATH` instead of `python -m engram.node` (profilers, fakes)",
    )
    up.add_argument(
        "--netns",
        action="store_true",
        help="run each zone in its own network namespace, so `partition` can cut a zone off (root)",
    )
    up.add_argument("--json", action="store_true", help="print the status JSON on stdout")

    status = add("status", cmd_status, "show a cluster's nodes, roles and journal")
    status.add_argument("--json", action="store_true", help="print JSON")

    down = add("down", cmd_down, "stop a cluster and remove its state, data and logs")
    down.add_argument("--keep-data", action="store_true", help="keep the directory (journal, logs)")

    kill = add("kill", cmd_kill, "send a signal to a node or journal server, as a failure drill")
    kill.add_argument(
        "target", metavar="TARGET", help="a node id (NAME-s0-n1) or a journal server (journal-a)"
    )
    kill.add_argument(
        "--signal", type=str.upper, choices=sorted(_SIGNALS), default="KILL", help="(default: %(default)s)"
    )

    cutting = add("partition", cmd_partition, "cut one zone off from the others (clusters up with --netns); "
                  "of a multi-region cluster, cut the link between two regions, or every link of one, while "
                  "every region goes on taking writes (a lost WAN link)")
    cutting.add_argument("where", nargs="+", metavar="ZONE|REGION",
                         help="a zone; or two regions (the link between them) or one (all its links)")
    healing = add("heal", cmd_heal, "reconnect a zone cut off by `partition`; of a multi-region cluster, "
                  "heal a cut link, or every cut link")
    healing.add_argument("where", nargs="*", metavar="ZONE|REGION",
                         help="the zone, or the link's regions as `partition` named them (of a multi-region "
                         "cluster, none: every cut link)")
    for p in (cutting, healing):
        p.add_argument("--timeout", type=float, default=multi_region.LINK_TIMEOUT, metavar="SECONDS",
                       help="of a multi-region cluster: give up when the link has not changed in this time "
                       "(default: %(default)s)")
        p.add_argument("--json", action="store_true", help="of a multi-region cluster: print the status "
                       "JSON on stdout")

    snapshot = add("snapshot", cmd_snapshot,
                   "take, verify and store a snapshot of every shard; truncate the journal behind it")
    snapshot.add_argument("--shard", type=int, default=None, help="only this shard (default: every shard)")
    snapshot.add_argument("--keep", type=int, default=None,
                          help="verified snapshots kept per shard; the journal is kept from the oldest "
                          f"(default: {DEFAULT_KEEP})")
    snapshot.add_argument("--export", metavar="DIR", default="",
                          help="take no snapshot: write each shard's newest verified one to DIR as "
                          "NAME-shard<N>-seq<S>.rdb (SHA-256 checked), for `up --restore-from`")

    scaling = add("scale", cmd_scale, "add or remove shards (moving slots) or replicas online, while the "
                  "cluster serves; run it again to resume one that was interrupted")
    count = scaling.add_mutually_exclusive_group(required=True)
    count.add_argument("--shards", type=_shard_count, metavar="N",
                       help="the new number of shards; removing shards removes the highest-numbered")
    count.add_argument("--replicas", type=_not_negative, metavar="R",
                       help="the new number of replicas of every shard: new ones start in zones their "
                       "shard does not use and catch up; removing stops replicas, never a primary")
    scaling.add_argument("--timeout", type=float, default=replicas.CATCH_UP_TIMEOUT, metavar="SECONDS",
                         help="with --replicas: give up when the new replicas take longer to catch up "
                         "(default: %(default)s)")
    scaling.add_argument("--max-keys-per-second", type=_not_negative, default=None, metavar="K",
                         help="bound the keys moved per second, 0 for no bound "
                         f"(default: {MoveOptions().max_keys_per_second})")
    scaling.add_argument("--chunk-slots", type=_positive, default=None, metavar="SLOTS",
                         help="slots moved per step, each step a pass over the source's keys "
                         f"(default: {ReshardOptions().chunk_slots})")
    scaling.add_argument("--user", default="", help="the Valkey user that moves keys (MIGRATE), when the "
                         "cluster's --users file turns the default user off")
    scaling.add_argument("--password-file", default="", metavar="PATH", help="that user's password")
    scaling.add_argument("--json", action="store_true", help="print the status JSON on stdout")

    upgrading = add("upgrade", cmd_upgrade, "rolling upgrade: replace every node with another node command "
                    "or valkey-server, replicas first, then each shard's primary after a switchover; run it "
                    "again to resume one that was interrupted")
    to = upgrading.add_mutually_exclusive_group(required=True)
    to.add_argument("--node-command", metavar="CMD",
                    help="run each node as `CMD --config PATH` (a newer engine's `python -m engram.node`)")
    to.add_argument("--valkey-server", metavar="PATH", help="the valkey-server executable every node runs")
    upgrading.add_argument(
        "--timeout", type=float, default=upgrade.STEP_TIMEOUT, metavar="SECONDS",
        help="give up when one step (a node back and caught up, a switchover) takes longer "
        "(default: %(default)s)",
    )
    upgrading.add_argument("--json", action="store_true", help="print the status JSON on stdout")

    failover = add("failover", cmd_failover, "planned switchover of a shard's primary")
    failover.add_argument("--shard", type=int, default=0, help="(default: %(default)s)")
    failover.add_argument(
        "--to", metavar="NODE_ID", help="the new primary (default: the most caught-up replica)"
    )
    failover.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="(default: %(default)s)"
    )
