"""A plain valkey-server for tests that need Valkey itself, not an Engram node."""

from __future__ import annotations

import socket as socket_module
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engram.valkey.process import valkey_command


@contextmanager
def running_valkey(*extra: str, prefix: str = "engram-vk-") -> Iterator[tuple[Path, Path]]:
    """Start valkey-server on a unix socket in a short temp dir; yields (socket, dir)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        socket = Path(tmp) / "valkey.sock"
        command = valkey_command(str(socket), tmp, list(extra))
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not _accepts(socket):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"valkey-server exited with {proc.returncode}: {err}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"valkey-server did not listen on {socket} within 10 s")
                time.sleep(0.02)
            yield socket, Path(tmp)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _accepts(path: Path) -> bool:
    with socket_module.socket(socket_module.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
