"""The Helm chart, rendered offline by Helm's own Go SDK: valid objects, least privilege, CRDs in sync."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
import yaml
from k8s_offline import CHART_DIR, CRD_DIR, validate_manifest

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "metrics-peering": {"metrics": {"enabled": True}, "peering": {"enabled": True}, "replicaCount": 2},
    "one-namespace": {"watchNamespace": "databases", "peering": {"enabled": True}},
    "no-cert-manager": {"certManager": {"enabled": False}},
    "pinned-digest": {
        "image": {"repository": "registry.example/engram-operator", "digest": "sha256:" + "a" * 64}
    },
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        files = chart.render(values, name="engram", namespace="engram-system", is_install=True)
    docs = []
    for name, text in sorted(files.items()):
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_chart_is_valid_kubernetes(name: str) -> None:
    docs = render(VALUE_SETS[name])
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("kopf.dev/"):
            continue  # a custom resource of the peering CRD rendered alongside it
        validate_manifest(doc)


def test_chart_passes_helm_lint() -> None:
    result = helm.lint(str(CHART_DIR))
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []


def test_values_schema_refuses_unknown_and_bad_values() -> None:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        chart.validate_schema({})
        with pytest.raises(helm.HelmError):
            chart.validate_schema({"replicas": 2})
        with pytest.raises(helm.HelmError):
            chart.validate_schema({"image": {"repository": "x", "pullPolicy": "Sometimes"}})


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in CRD_DIR.glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    assert source and copies == source, "run scripts/sync-crds"


def _rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] == kind for r in d["rules"]]


def test_rbac_is_least_privilege() -> None:
    docs = render({})
    rules = _rules(docs, "ClusterRole")
    verbs = {
        (g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert verbs[("", "nodes")] == {"get", "list", "watch"}
    assert "delete" in verbs[("", "pods")]
    # Everything else is created once and removed by the garbage collector through owner references.
    for resource in ("services", "configmaps"):
        assert verbs[("", resource)] == {"get", "list", "watch", "create"}
    assert verbs[("apps", "statefulsets")] == {"get", "list", "watch", "create"}
    # A failed provisioning Job is deleted so that a fresh one retries.
    assert verbs[("batch", "jobs")] == {"get", "list", "watch", "create", "delete"}
    # Children carry an owner reference with blockOwnerDeletion: true; with the
    # OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift and many hardened
    # clusters) creating them needs update on the owner's finalizers, or every create is refused.
    assert verbs[("engram.io", "memoryclusters/finalizers")] == {"update"}
    # MultiRegionClusters: watched, their status and kopf's finalizer patched. Its regions'
    # MemoryClusters are created, their spec patched when the template changes, and deleted by its
    # finalizer when they live in another namespace (no owner reference can point there).
    assert verbs[("engram.io", "multiregionclusters")] == {"get", "list", "watch", "patch"}
    assert verbs[("engram.io", "multiregionclusters/status")] == {"get", "patch"}
    # A region's MemoryCluster in the MultiRegionCluster's own namespace names it as owner with
    # blockOwnerDeletion: true, which needs update on the owner's finalizers too.
    assert verbs[("engram.io", "multiregionclusters/finalizers")] == {"update"}
    assert verbs[("engram.io", "memoryclusters")] == {"get", "list", "watch", "patch", "create", "delete"}
    # Passwords of spec.users are read by name (get), never listed or watched; the users file is
    # written (create, update) into the cluster's own Secret.
    assert verbs[("", "secrets")] == {"get", "create", "update"}
    # NetworkPolicies are listed to compare, rewritten when spec.network changes and deleted when it
    # turns them off; never watched or read one by one.
    assert verbs[("networking.k8s.io", "networkpolicies")] == {"list", "create", "update", "delete"}
    # spec.tls.issuerRef: the clusters' Certificates are listed by label and created, never changed.
    assert verbs[("cert-manager.io", "certificates")] == {"list", "create"}
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in rules)
    assert not any(r in ("customresourcedefinitions", "namespaces") for _, r in verbs)


def test_cert_manager_access_can_be_turned_off() -> None:
    docs = render({"certManager": {"enabled": False}})
    groups = {g for rule in _rules(docs, "ClusterRole") for g in rule["apiGroups"]}
    assert "cert-manager.io" not in groups
    one = render({"watchNamespace": "databases"})
    [role] = [d for d in one if d["kind"] == "Role"]
    [rule] = [r for r in role["rules"] if "cert-manager.io" in r["apiGroups"]]
    assert set(rule["verbs"]) == {"list", "create"}


def test_one_namespace_mode_grants_only_nodes_cluster_wide() -> None:
    docs = render(VALUE_SETS["one-namespace"])
    cluster_resources = {r for rule in _rules(docs, "ClusterRole") for r in rule["resources"]}
    assert cluster_resources == {"nodes", "clusterkopfpeerings"}
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "databases"
    assert any("jobs" in rule["resources"] and "batch" in rule["apiGroups"] for rule in role["rules"])
    assert any("memoryclusters/finalizers" in rule["resources"] for rule in role["rules"])
    assert any("multiregionclusters/finalizers" in rule["resources"] for rule in role["rules"])
    # Secrets only in the watched namespace: the passwords of its clusters, and their users files.
    assert any("secrets" in rule["resources"] for rule in role["rules"])


def test_operator_pod_is_restricted_and_standalone_without_peering() -> None:
    docs = render({})
    [deploy] = [d for d in docs if d["kind"] == "Deployment"]
    assert deploy["spec"]["replicas"] == 1
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # A MemoryCluster named like the operator's env settings must not inject Service variables.
    assert pod["enableServiceLinks"] is False
    [container] = pod["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"] for e in container["env"]}
    assert "ENGRAM_PEERING_NAME" not in env and "ENGRAM_METRICS_PORT" not in env


def test_digest_pins_the_operator_image() -> None:
    docs = render(VALUE_SETS["pinned-digest"])
    [deploy] = [d for d in docs if d["kind"] == "Deployment"]
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example/engram-operator@sha256:" + "a" * 64


def test_the_operator_tells_memoryclusters_policies_how_to_select_its_own_pods() -> None:
    """The selector the operator writes into every NetworkPolicy matches its pods, in its namespace."""
    from engram_operator.builders.network import parse_selector

    [deploy] = [d for d in render({}) if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["ENGRAM_OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    selector = parse_selector(env["ENGRAM_OPERATOR_POD_SELECTOR"]["value"])
    assert selector == deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()


def _operator_policy(values: dict[str, Any]) -> dict[str, Any] | None:
    found = [d for d in render(values) if d["kind"] == "NetworkPolicy"]
    return found[0] if found else None


def test_the_operators_own_pods_admit_nothing_but_their_metrics_port() -> None:
    """The health port is probed by the kubelet from the pod's node, which policies always admit."""
    policy = _operator_policy({})
    assert policy is not None
    [deploy] = [d for d in render({}) if d["kind"] == "Deployment"]
    assert policy["spec"]["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"] and policy["spec"]["ingress"] == []
    scraped = _operator_policy({"monitoring": {"podMonitor": {"enabled": True}}})
    assert scraped is not None
    assert scraped["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9100}]}]
    narrowed = _operator_policy(
        {
            "metrics": {"enabled": True},
            "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"a": "b"}}}]},
        }
    )
    assert narrowed is not None
    assert narrowed["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"a": "b"}}}]
    assert _operator_policy({"networkPolicy": {"enabled": False}}) is None


def test_every_policy_scan_skip_gives_a_reason() -> None:
    """checkov findings the chart does not fix are skipped on the object, each with why (README)."""
    [deploy] = [d for d in render({}) if d["kind"] == "Deployment"]
    skips = {k: v for k, v in deploy["metadata"]["annotations"].items() if k.startswith("checkov.io/skip")}
    assert {v.split("=", 1)[0] for v in skips.values()} == {"CKV_K8S_38", "CKV_K8S_43", "CKV_K8S_15"}
    assert all(len(v.split("=", 1)[1]) > 20 for v in skips.values())
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
