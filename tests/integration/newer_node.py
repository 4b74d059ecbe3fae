"""An engine node one version newer than this checkout, for upgrade tests.

`python newer_node.py --config PATH` runs exactly what `python -m engram.node --config PATH` runs,
except that ENGINE_VERSION, and so every journal entry it writes and its ENGRAM.STATUS, says NEWER.
"""

from __future__ import annotations

import sys

import engram

NEWER = (*engram.ENGINE_VERSION[:-1], engram.ENGINE_VERSION[-1] + 1)


def main() -> int:
    # Before any node module is imported: they bind ENGINE_VERSION when they load.
    engram.ENGINE_VERSION = NEWER
    from engram.node.__main__ import main as run_node

    return run_node()


if __name__ == "__main__":
    sys.exit(main())
