"""NetworkPolicies on kind: a pod that is not one of the cluster's reaches Valkey's port, and neither
a node's control port nor the journal; turning the policies off opens them again.

kind enforces NetworkPolicy through kindnetd (kube-network-policies) from kind v0.24.0, whose node
images start at Kubernetes 1.31; e2e/setup.sh creates the cluster with the kind binary's default
image, so an older kind gives a cluster that ignores policies. The test skips there, saying so,
rather than pass without anything having been enforced. The client pod is in the cluster's
namespace, so only labels tell it apart from the cluster's own pods.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import k8s_api
import pytest
from k8s_api import Kubectl, eventually, eventually_equal

NAME = "netpol"
ENGINE = f"engram.io/cluster={NAME},app.kubernetes.io/component=engine"
CONTROL_PORT = 16379
JOURNAL_CLIENT_PORT = 4222


def memorycluster(policies: bool = True) -> dict[str, Any]:
    return k8s_api.memorycluster(NAME, 1, 1, network={"policies": policies})


def server_minor(kube: Kubectl) -> int:
    version = json.loads(kube.run("version", "-o", "json"))["serverVersion"]
    return int(re.sub(r"\D", "", version["minor"]))  # "31", or "31+" on some providers


def connect(kube: Kubectl, client_pod: str, host: str, port: int) -> dict[str, Any]:
    return json.loads(kube.exec(client_pod, "python", "/tmp/connect.py", host, str(port)))


def condition(kube: Kubectl, ctype: str) -> dict[str, Any]:
    conditions = (kube.get("memorycluster", NAME).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == ctype), {})


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    yield
    kube.run("delete", "memorycluster", NAME, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture(scope="module")
def ready_cluster(kube: Kubectl) -> None:
    if server_minor(kube) < 31:
        pytest.skip(
            "kind enforces NetworkPolicy only with kindnetd from kind v0.24.0 (Kubernetes 1.31 node "
            "images); this cluster's policies would be ignored, so nothing could be checked"
        )
    kube.apply(memorycluster())
    # Ready also shows that the operator reaches every node's control port through the policy, and
    # that the kubelet's probes are not blocked by it.
    eventually_equal(kube, "Ready", lambda: condition(kube, "Ready").get("status"), "True", timeout=600)


def test_only_valkeys_port_is_open_to_a_pod_outside_the_cluster(
    kube: Kubectl, client_pod: str, ready_cluster: None
) -> None:
    [policy] = [p for p in kube.get("networkpolicy")["items"] if p["metadata"]["name"] == f"{NAME}-engine"]
    assert policy["metadata"]["ownerReferences"][0]["name"] == NAME
    node_ip = kube.pods(ENGINE)[0]["status"]["podIP"]
    journal = f"{NAME}-journal-0-0.{NAME}-journal.{kube.namespace}.svc.cluster.local"
    assert connect(kube, client_pod, node_ip, 6379) == {"open": True}
    assert connect(kube, client_pod, node_ip, CONTROL_PORT)["open"] is False
    assert connect(kube, client_pod, journal, JOURNAL_CLIENT_PORT)["open"] is False


def test_turning_the_policies_off_deletes_them_and_opens_the_ports(
    kube: Kubectl, client_pod: str, ready_cluster: None
) -> None:
    kube.apply(memorycluster(policies=False))
    eventually(
        kube,
        "the cluster's NetworkPolicies deleted",
        lambda: [p["metadata"]["name"] for p in kube.get("networkpolicy")["items"]],
        lambda names: not any(n.startswith(f"{NAME}-") for n in names),
        timeout=60,
    )
    node_ip = kube.pods(ENGINE)[0]["status"]["podIP"]
    eventually_equal(
        kube,
        "the control port reachable",
        lambda: connect(kube, client_pod, node_ip, CONTROL_PORT),
        {"open": True},
        timeout=60,
    )
