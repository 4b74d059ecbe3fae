"""Runs an Engram node (`python gc_churn_node.py --config PATH`) while another thread runs the
garbage collector all the time: an asyncio task nothing holds is then collected at its first wait,
which in a normal run happens only now and then."""

from __future__ import annotations

import gc
import runpy
import sys
import threading
import time

import engram.node.node  # noqa: F401  (imported before the freeze below)


def _churn() -> None:
    while True:
        gc.collect()
        time.sleep(0.002)


if __name__ == "__main__":
    # What the imports made is never garbage: left out of every collection, which then costs little
    # enough for the node to keep its leases on a loaded machine.
    gc.freeze()
    threading.Thread(target=_churn, name="gc-churn", daemon=True).start()
    sys.argv = ["engram.node", *sys.argv[1:]]
    runpy.run_module("engram.node", run_name="__main__", alter_sys=True)
