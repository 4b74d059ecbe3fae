"""`python -m engram.node --config PATH`: run one engine node until signalled."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from engram.node.config import NodeConfig
from engram.node.node import Node, NodeHalted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engram node", description="Run one Engram engine node.")
    parser.add_argument("--config", default=os.environ.get("ENGRAM_NODE_CONFIG"),
                        help="path of the node's JSON config (or ENGRAM_NODE_CONFIG)")
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config is required")
    config = NodeConfig.load(args.config)
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s {config.node_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is a speed-up, not a requirement
        pass
    return asyncio.run(_run(config))


async def _run(config: NodeConfig) -> int:
    node = Node(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop)
    try:
        await node.run()
    except NodeHalted as exc:
        logging.getLogger("engram.node").error("node halted: %s", exc)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
