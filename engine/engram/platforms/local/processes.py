"""Child processes: spawn with logs, tie to the parent's life, stop gently then firmly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from engram.lifetime import dies_with_this_process


def spawn(
    argv: Sequence[str],
    log: str | Path,
    env: dict[str, str] | None = None,
    tie_to_parent: bool = True,
) -> subprocess.Popen:
    """Start argv with stdout and stderr appended to log; it dies with us unless tie_to_parent is False."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
            preexec_fn=dies_with_this_process(signal.SIGTERM) if tie_to_parent else None,
            start_new_session=not tie_to_parent,
        )


def stop_all(procs: Sequence[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM every process, wait up to timeout for all of them, then SIGKILL the rest."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


async def stop_all_async(procs: Sequence[subprocess.Popen], timeout: float = 10.0) -> None:
    """stop_all for a process that must keep serving meanwhile: it waits without blocking the loop."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)
            p.terminate()
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in live) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for p in live:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()  # brief: SIGKILL cannot be caught


def pid_alive(pid: int | None) -> bool:
    """True when pid names a running (not zombie) process."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    """The process's argv, or [] when it is gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_ours(pid: int | None, marker: str) -> bool:
    """True when pid is alive and its command line mentions marker (guards against pid reuse)."""
    return bool(pid) and pid_alive(pid) and any(marker in a for a in cmdline(pid))  # type: ignore[arg-type]


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    """Send sig to pid; False when it is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Wait until none of pids is alive; True if they all went within timeout."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def tail(path: str | Path, lines: int = 5) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
