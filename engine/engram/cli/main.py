"""The `engram` command: a small argparse tree; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys

from engram import __version__
from engram.bench import cli as bench_cli
from engram.bench import recovery as recovery_bench
from engram.bench import regions as regions_bench
from engram.bench import reshard as reshard_bench
from engram.chaos import cli as chaos_cli
from engram.cli import local, provision, reshard


def _run_node(args: argparse.Namespace) -> int:
    """`engram node --config PATH`: run one engine node in this process (what platforms start)."""
    from engram.node.__main__ import main as node_main  # lazy: the CLI must not pay for the engine

    return node_main(["--config", args.config])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engram",
        description="Engram: Valkey in memory, every write committed to a multi-zone journal.",
    )
    parser.add_argument("--version", action="version", version=f"engram {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local.register(commands)
    bench_cli.add_parser(commands)
    recovery_bench.add_parser(commands)
    reshard_bench.add_parser(commands)
    regions_bench.add_parser(commands)
    chaos_cli.add_parser(commands)
    provision.add_parser(commands)
    reshard.add_parser(commands)
    node = commands.add_parser("node", help="run one engine node (platforms start this)")
    node.add_argument("--config", required=True, metavar="PATH", help="the node's NodeConfig JSON file")
    node.set_defaults(func=_run_node)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
