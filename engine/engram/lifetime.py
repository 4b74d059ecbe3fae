"""Children that die with their parent, as a container dies with its pod (Linux only)."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def dies_with_this_process(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """A preexec_fn: the kernel sends the child `sig` when this process dies, even on kill -9, so
    nothing a crashed process started outlives it. Call it in the parent, when starting the child."""
    # Taken here, before the fork: read in the child, a parent killed in between would be mistaken
    # for init, and the child would be left running (seen: an orphaned rehearsal Valkey).
    parent = os.getpid()

    def tie() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
        except OSError:
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return tie
