"""A child started with dies_with_this_process does not outlive its parent, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from engram.platforms.local.processes import pid_alive
from engram.platforms.local.testing import wait_for


def test_a_child_dies_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "from engram.lifetime import dies_with_this_process\n"
         "child = subprocess.Popen(['sleep', '60'], preexec_fn=dies_with_this_process())\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert pid_alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for(lambda: not pid_alive(child), 10, "the child to die with its parent")
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
