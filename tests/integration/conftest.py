"""Module-scoped local clusters, for test files that share one cluster between their tests."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engram.platforms.local.testing import force_cleanup, log_tails, run_engram


@pytest.fixture(scope="module")
def local_cluster_module() -> Iterator[Callable[..., dict[str, Any]]]:
    """Like `local_cluster`, but the clusters live for the whole test module."""
    base = Path(tempfile.mkdtemp(prefix="eg-m-", dir="/tmp"))
    started: list[str] = []

    def start(shards: int = 1, replicas: int = 2, lease: float = 2.0, **options: Any) -> dict[str, Any]:
        name = f"m{len(started)}"
        argv = ["local", "up", name, "--dir", str(base), "--json", "--shards", str(shards),
                "--replicas", str(replicas), "--lease", str(lease)]
        for option, value in options.items():
            flag = f"--{option.replace('_', '-')}"
            argv += [flag] if value is True else [flag, str(value)]
        started.append(name)
        result = run_engram(*argv, timeout=240)
        if result.returncode != 0:
            pytest.fail(f"engram local up {name} failed (exit {result.returncode}):\n{result.stderr}")
        return json.loads(result.stdout)

    try:
        yield start
    finally:
        for name in started:
            result = run_engram("local", "down", name, "--dir", str(base), timeout=90)
            if result.returncode != 0:
                print(f"=== logs of cluster {name}\n{log_tails(name, base)}")
            force_cleanup(name, base)
        shutil.rmtree(base, ignore_errors=True)
