"""The thin part: kubectl itself reads and patches objects and forwards ports (its config, its auth)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from engram_operator.kubectl.view import PluginError, forwarded_port

KUBECTL = "kubectl"
FORWARD_TIMEOUT = 20.0


def kubectl(*args: str, namespace: str | None = None, timeout: float = 60.0) -> str:
    argv = [KUBECTL, *args, *(["-n", namespace] if namespace else [])]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise PluginError("kubectl is not on PATH (kubectl engram runs it for every call)") from None
    except subprocess.TimeoutExpired:
        raise PluginError(f"`{' '.join(argv)}` did not answer within {timeout:g}s") from None
    if done.returncode != 0:
        raise PluginError(done.stderr.strip() or f"`{' '.join(argv)}` exited with {done.returncode}")
    return done.stdout


def get_json(*args: str, namespace: str | None = None) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json", namespace=namespace))


@contextlib.contextmanager
def port_forward(pod: str, port: int, namespace: str | None) -> Iterator[int]:
    """A local port forwarded to the pod's port while the block runs."""
    argv = [KUBECTL, "port-forward", f"pod/{pod}", f":{port}", *(["-n", namespace] if namespace else [])]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise PluginError("kubectl is not on PATH (kubectl engram runs it for every call)") from None
    try:
        deadline = time.monotonic() + FORWARD_TIMEOUT
        assert proc.stdout is not None
        while (local := forwarded_port(proc.stdout.readline())) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                error = proc.stderr.read().strip() if proc.stderr and proc.poll() is not None else ""
                raise PluginError(f"kubectl port-forward to {pod}:{port} failed: {error or 'no port given'}")
        yield local
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
