"""Children that die with their parent, as a container dies with its pod (Linux only)."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """Run in the child before exec (preexec_fn): the kernel sends `sig` when the parent dies, even
    on kill -9, so nothing a crashed process started outlives it."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def terminate_with_parent() -> None:
    """die_with_parent with SIGTERM: the child may stop gently."""
    die_with_parent(signal.SIGTERM)
