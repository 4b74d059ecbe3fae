"""kind e2e fixtures. Everything here skips, with the reason, unless a real cluster is reachable.

Prerequisites: docker, kind, kubectl and a cluster made by e2e/setup.sh (the current kubectl
context), with the Engram operator installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from k8s_api import OPERATOR_NAMESPACE, Kubectl, eventually

ENGINE_IMAGE = "ghcr.io/engram-db/engram:0.1.0"
CLIENTS = Path(__file__).parent / "clients"


def _missing_prerequisite() -> str | None:
    """The first reason the suite cannot run here, or None."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        docker = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if docker.returncode != 0:
        return "no Docker engine is reachable (docker info failed)"
    try:
        reach = subprocess.run(
            ["kubectl", "version", "--request-timeout=5s"], capture_output=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "kubectl timed out reaching the cluster"
    if reach.returncode != 0:
        return "no Kubernetes cluster is reachable from the current kubectl context (run e2e/setup.sh)"
    operator = subprocess.run(
        ["kubectl", "-n", OPERATOR_NAMESPACE, "get", "deployment", "engram-operator"],
        capture_output=True,
        timeout=30,
    )
    if operator.returncode != 0:
        return f"the Engram operator is not installed in {OPERATOR_NAMESPACE} (run e2e/setup.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _missing_prerequisite()
    if reason:
        skip = pytest.mark.skip(reason=f"kind e2e skipped: {reason}")
        for item in items:
            item.add_marker(skip)


def namespace_for(module: str) -> str:
    """A fresh namespace named for the test file: test_zone_loss -> e2e-zone-loss-1a2b3c."""
    behaviour = module.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    return f"e2e-{behaviour[:40]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def kube(request: pytest.FixtureRequest) -> Iterator[Kubectl]:
    """Each file (one behaviour) gets its own namespace, deleted afterwards even when tests fail, so
    nothing one file leaves behind is seen by the next."""
    namespace = namespace_for(request.module.__name__)
    subprocess.run(["kubectl", "create", "namespace", namespace], check=True, capture_output=True)
    try:
        yield Kubectl(namespace)
    finally:
        subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"], capture_output=True)


@pytest.fixture(scope="module")
def client_pod(kube: Kubectl) -> str:
    """A pod with redis-py (the engine image) from which tests talk to the cluster by its Service DNS."""
    kube.run(
        "run", "client", f"--image={ENGINE_IMAGE}", "--restart=Never", "--command", "--", "sleep", "7200"
    )
    eventually(
        kube,
        "client pod running",
        lambda: kube.get("pod", "client")["status"].get("phase"),
        lambda phase: phase == "Running",
        timeout=120,
    )
    for script in CLIENTS.glob("*.py"):
        kube.exec("client", "sh", "-c", f"cat > /tmp/{script.name}", stdin=script.read_text())
    return "client"
