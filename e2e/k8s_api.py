"""A thin kubectl wrapper and `eventually` helpers; a timeout prints the operator's log."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
OPERATOR_NAMESPACE = "engram-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=engram-operator"


class Kubectl:
    """Runs kubectl against the current context, in one namespace unless told otherwise."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def run(
        self,
        *args: str,
        namespace: str | None = None,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> str:
        proc = self.attempt(*args, namespace=namespace, stdin=stdin, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(proc.args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def attempt(
        self, *args: str, namespace: str | None = None, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl and return its exit code, stdout and stderr: for what the API server refuses."""
        cmd = ["kubectl", "-n", namespace or self.namespace, *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)

    def get(self, kind: str, name: str = "", selector: str = "") -> dict[str, Any]:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if selector:
            args += ["-l", selector]
        return json.loads(self.run(*args))

    def exists(self, kind: str, name: str) -> bool:
        return bool(self.run("get", kind, name, "--ignore-not-found", "-o", "name").strip())

    def apply(self, manifest: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", stdin=json.dumps(manifest))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return self.get("pods", selector=selector)["items"]

    def count_pods_with_label(self, selector: str, ready_only: bool = False) -> int:
        pods = [p for p in self.pods(selector) if not p["metadata"].get("deletionTimestamp")]
        if ready_only:
            pods = [p for p in pods if is_ready(p)]
        return len(pods)

    def exec(self, pod: str, *command: str, stdin: str | None = None, timeout: float = 300) -> str:
        return self.run("exec", "-i", pod, "--", *command, stdin=stdin, timeout=timeout)

    def operator_logs(self, lines: int = 200) -> str:
        return self.run(
            "logs", "-l", OPERATOR_SELECTOR, f"--tail={lines}", namespace=OPERATOR_NAMESPACE, check=False
        )


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def eventually(
    kube: Kubectl,
    what: str,
    probe: Callable[[], T],
    accept: Callable[[T], bool],
    timeout: float = 300,
    interval: float = 3,
) -> T:
    """Poll until accept(probe()) or fail, saying what was awaited and showing the operator's log."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if accept(last):
                return last
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
            last = err
        time.sleep(interval)
    events = kube.run("get", "events", "--sort-by=.lastTimestamp", check=False)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}\n"
        f"--- events ---\n{events[-4000:]}\n--- operator log ---\n{kube.operator_logs()}"
    )


def eventually_equal(
    kube: Kubectl, what: str, probe: Callable[[], T], expected: T, timeout: float = 300, interval: float = 3
) -> T:
    return eventually(kube, f"{what} == {expected!r}", probe, lambda v: v == expected, timeout, interval)


def memorycluster(name: str, shards: int, replicas: int, **spec: Any) -> dict[str, Any]:
    """A MemoryCluster manifest with a small 3-server journal; ``spec`` adds the fields under test."""
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": name},
        "spec": {
            "shards": shards,
            "replicasPerShard": replicas,
            "journal": {"replicas": 3, "storage": {"size": "1Gi"}},
            **spec,
        },
    }


def engine_selector(name: str) -> str:
    """The label selector of a MemoryCluster's engine pods."""
    return f"engram.io/cluster={name},app.kubernetes.io/component=engine"


def endpoint(kube: Kubectl, name: str) -> str:
    """The cluster's configuration endpoint (its Service) as a client pod in the namespace dials it."""
    return f"{name}.{kube.namespace}.svc.cluster.local"


def status(kube: Kubectl, name: str) -> dict[str, Any]:
    return kube.get("memorycluster", name).get("status") or {}


def condition(kube: Kubectl, name: str, ctype: str) -> dict[str, Any]:
    """One condition of the MemoryCluster's status, or {} while the operator has not set it."""
    return next((c for c in status(kube, name).get("conditions") or [] if c["type"] == ctype), {})


def wait_ready(kube: Kubectl, name: str, engine_pods: int, timeout: float = 600) -> None:
    """Wait for the journal, every engine pod and the Ready condition."""
    eventually_equal(
        kube,
        f"{name}: {engine_pods} engine pods ready",
        lambda: kube.count_pods_with_label(engine_selector(name), ready_only=True),
        engine_pods,
        timeout=timeout,
    )
    eventually_equal(
        kube, f"{name} Ready", lambda: condition(kube, name, "Ready").get("status"), "True", timeout=120
    )


def node_zones(kube: Kubectl) -> dict[str, str]:
    """Each Kubernetes node's zone label ("" for the control plane, which kind leaves unlabelled)."""
    return {
        n["metadata"]["name"]: n["metadata"]["labels"].get("topology.kubernetes.io/zone", "")
        for n in kube.get("nodes")["items"]
    }


def cluster_events(kube: Kubectl, name: str) -> list[dict[str, Any]]:
    """The events posted about the MemoryCluster, oldest first."""
    out = kube.run("get", "events", f"--field-selector=involvedObject.name={name}", "-o", "json")
    items = json.loads(out)["items"]
    return sorted(items, key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or "")


def delete_memorycluster(kube: Kubectl, name: str) -> None:
    """Delete without waiting (the file's namespace goes next anyway); never fails a teardown."""
    kube.run("delete", "memorycluster", name, "--ignore-not-found", "--wait=false", check=False)
