"""`python -m engram.chaos ...`: the same as `engram chaos ...`."""

from __future__ import annotations

import argparse
import sys

from engram.chaos.cli import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engram")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["chaos", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
