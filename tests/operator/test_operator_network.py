"""NetworkPolicies: which pods reach which ports of a MemoryCluster, the off switch, and the API calls.

``admits`` evaluates a built policy the way the network plugin does for the peers we write
(matchLabels, a namespace chosen by name, ipBlock), so the tests read as who-reaches-what.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from cluster_state import just_applied, provisioned, running, spec
from k8s_offline import admit, core_structural_schema, crd_schema, memorycluster_crd, validate_manifest

from engram_operator import constants, kube, labels, reconcile
from engram_operator.builders.network import (
    NAMESPACE_NAME_LABEL,
    OperatorPeer,
    SelectorError,
    build_network_policies,
    engine_policy_name,
    journal_policy_name,
    parse_selector,
)
from engram_operator.decisions import decide, plan_network_policies
from engram_operator.decisions.plan import Plan
from engram_operator.observe import Observed, policy_hashes
from engram_operator.spec import ClusterSpec

OPERATOR = OperatorPeer(
    "engram-system", {"app.kubernetes.io/name": "engram-operator", "app.kubernetes.io/instance": "op"}
)


@dataclass(frozen=True)
class Pod:
    """A would-be source of traffic: its namespace and labels."""

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.0.0.9"


def _matches(selector: dict[str, Any], have: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "the builder writes matchLabels only"
    return all(have.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_admits(peer: dict[str, Any], source: Pod, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(source.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if "namespaceSelector" in peer:
        namespace_ok = _matches(peer["namespaceSelector"], {NAMESPACE_NAME_LABEL: source.namespace})
    else:
        namespace_ok = source.namespace == policy_ns
    return namespace_ok and _matches(peer.get("podSelector") or {}, source.labels)


def admits(policy: dict[str, Any], source: Pod, port: int) -> bool:
    """Whether the policy lets ``source`` open a TCP connection to ``port`` of the pods it selects."""
    for rule in policy["spec"]["ingress"]:
        if not any(p["port"] == port and p["protocol"] == "TCP" for p in rule["ports"]):
            continue
        if "from" not in rule or any(
            _peer_admits(peer, source, policy["metadata"]["namespace"]) for peer in rule["from"]
        ):
            return True
    return False


def policies(cluster: ClusterSpec) -> dict[str, dict[str, Any]]:
    built = {p["metadata"]["name"]: p for p in build_network_policies(cluster, OPERATOR)}
    return {
        "engine": built[engine_policy_name(cluster.name)],
        "journal": built[journal_policy_name(cluster.name)],
    }


def engine_pod(cluster: str = "demo", namespace: str = "db") -> Pod:
    return Pod(namespace, labels.engine_pod_labels(cluster, 0, 1, "zone-a", "primary"))


def journal_pod(cluster: str = "demo") -> Pod:
    return Pod("db", {**labels.cluster_labels(cluster, labels.JOURNAL), labels.JOURNAL_SERVER: "0"})


def provision_pod(cluster: str) -> Pod:
    return Pod("db", labels.cluster_labels(cluster, labels.PROVISION))


def reshard_pod(cluster: str = "demo", namespace: str = "db") -> Pod:
    return Pod(namespace, labels.cluster_labels(cluster, labels.RESHARD))


OPERATOR_POD = Pod("engram-system", {**OPERATOR.pod_labels, "pod-template-hash": "abc"})
APP = Pod("db", {"app": "shop"})
ELSEWHERE = Pod("web", {"app": "shop"})


def test_policies_select_the_clusters_engine_and_journal_pods_and_restrict_ingress_only() -> None:
    built = policies(spec())
    assert built["engine"]["spec"]["podSelector"] == {"matchLabels": labels.selector("demo", labels.ENGINE)}
    assert built["journal"]["spec"]["podSelector"] == {"matchLabels": labels.selector("demo", labels.JOURNAL)}
    for policy in built.values():
        # Egress stays open: nodes need DNS, the journal and object storage.
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert policy["metadata"]["labels"][labels.MANAGED_BY] == labels.MANAGER


def test_any_pod_anywhere_reaches_valkeys_port_by_default() -> None:
    engine = policies(spec())["engine"]
    for source in (APP, ELSEWHERE, engine_pod("other"), Pod("db", {}, ip="192.168.1.1")):
        assert admits(engine, source, constants.CLIENT_PORT)


def test_the_control_port_admits_only_the_clusters_nodes_and_the_operator() -> None:
    engine = policies(spec())["engine"]
    assert admits(engine, engine_pod(), constants.ADMIN_PORT)
    assert admits(engine, OPERATOR_POD, constants.ADMIN_PORT)
    refused = [
        APP,
        ELSEWHERE,
        engine_pod("other"),  # another cluster's node
        engine_pod(namespace="web"),  # the same labels in another namespace
        journal_pod(),
        # The operator's labels in another namespace, and another pod of the operator's namespace.
        Pod("db", OPERATOR.pod_labels),
        Pod("engram-system", {"app.kubernetes.io/name": "engram-operator"}),
    ]
    for source in refused:
        assert not admits(engine, source, constants.ADMIN_PORT), source


def test_only_the_clusters_nodes_and_provisioning_jobs_reach_the_journal() -> None:
    journal = policies(spec())["journal"]
    assert admits(journal, engine_pod(), constants.JOURNAL_CLIENT_PORT)
    assert admits(journal, provision_pod("demo"), constants.JOURNAL_CLIENT_PORT)
    # A cluster restored from this one reads its snapshots here through its own provisioning Job.
    assert admits(journal, provision_pod("copy"), constants.JOURNAL_CLIENT_PORT)
    for source in (APP, ELSEWHERE, engine_pod("other"), OPERATOR_POD, engine_pod(namespace="web")):
        assert not admits(journal, source, constants.JOURNAL_CLIENT_PORT), source


def test_journal_routes_admit_only_the_clusters_own_servers() -> None:
    journal = policies(spec())["journal"]
    assert admits(journal, journal_pod(), constants.JOURNAL_CLUSTER_PORT)
    for source in (journal_pod("other"), engine_pod(), APP, OPERATOR_POD):
        assert not admits(journal, source, constants.JOURNAL_CLUSTER_PORT), source


def test_metrics_ports_are_open_for_scraping_unless_narrowed() -> None:
    built = policies(spec())
    assert admits(built["engine"], ELSEWHERE, constants.METRICS_PORT)
    assert admits(built["journal"], ELSEWHERE, constants.JOURNAL_MONITOR_PORT)
    prometheus = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "monitoring"}}}
    narrowed = policies(spec(network={"metrics": [prometheus]}))
    scraper = Pod("monitoring", {"app": "prometheus"})
    for policy, port in (
        (narrowed["engine"], constants.METRICS_PORT),
        (narrowed["journal"], constants.JOURNAL_MONITOR_PORT),
    ):
        assert admits(policy, scraper, port)
        assert not admits(policy, ELSEWHERE, port)


def test_spec_network_clients_narrows_valkeys_port_and_keeps_the_operators_access() -> None:
    clients = [{"podSelector": {"matchLabels": {"app": "shop"}}}, {"ipBlock": {"cidr": "192.168.0.0/16"}}]
    engine = policies(spec(network={"clients": clients}))["engine"]
    assert admits(engine, APP, constants.CLIENT_PORT)
    assert admits(engine, Pod("db", {}, ip="192.168.1.1"), constants.CLIENT_PORT)
    assert not admits(engine, Pod("db", {"app": "other"}), constants.CLIENT_PORT)
    assert not admits(engine, ELSEWHERE, constants.CLIENT_PORT)  # podSelector alone: own namespace
    assert admits(engine, OPERATOR_POD, constants.ADMIN_PORT)
    assert admits(engine, engine_pod(), constants.ADMIN_PORT)


def test_narrowed_clients_still_let_the_clusters_nodes_and_reshard_job_reach_valkey() -> None:
    """Resharding: the source primary's Valkey MIGRATEs keys to the target primary's client port,
    directed by the reshard Job over that port; neither is in an application's clients list."""
    clients = [{"podSelector": {"matchLabels": {"app": "shop"}}}]
    engine = policies(spec(network={"clients": clients}))["engine"]
    assert admits(engine, engine_pod(), constants.CLIENT_PORT)
    assert admits(engine, reshard_pod(), constants.CLIENT_PORT)
    for source in (engine_pod("other"), reshard_pod("other"), reshard_pod(namespace="web"), journal_pod()):
        assert not admits(engine, source, constants.CLIENT_PORT), source
    # Nothing more than Valkey's port: the control port stays the nodes' and the operator's.
    assert not admits(engine, reshard_pod(), constants.ADMIN_PORT)


def test_the_clusters_reshard_job_reaches_its_journal_and_no_other() -> None:
    assert admits(policies(spec())["journal"], reshard_pod(), constants.JOURNAL_CLIENT_PORT)
    assert not admits(policies(spec())["journal"], reshard_pod("other"), constants.JOURNAL_CLIENT_PORT)
    assert not admits(policies(spec())["journal"], reshard_pod(), constants.JOURNAL_CLUSTER_PORT)


def test_every_port_the_pods_serve_is_in_their_policy() -> None:
    """A port added to a pod without a rule would be silently unreachable."""
    cluster = spec()
    built = policies(cluster)
    [pod, *_] = [o for o in decide(cluster, provisioned(cluster)).create if o["kind"] == "Pod"]
    first = decide(cluster, just_applied(cluster)).create
    [statefulset, *_] = [o for o in first if o["kind"] == "StatefulSet"]

    def ports(pod_spec: dict[str, Any]) -> set[int]:
        return {p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports") or []}

    def policy_ports(policy: dict[str, Any]) -> set[int]:
        return {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}

    assert ports(pod["spec"]) == policy_ports(built["engine"])
    assert ports(statefulset["spec"]["template"]["spec"]) == policy_ports(built["journal"])


@pytest.mark.parametrize(
    "network",
    [
        {},
        {"clients": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}, "podSelector": {}}]},
        {"metrics": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]},
    ],
)
def test_every_policy_is_a_valid_networkpolicy(network: dict[str, Any]) -> None:
    for policy in build_network_policies(spec(network=network), OPERATOR):
        validate_manifest(policy)


def test_the_operator_peer_comes_from_the_charts_settings() -> None:
    peer = OperatorPeer.from_settings(
        "ops", "app.kubernetes.io/name=engram-operator, app.kubernetes.io/instance=x"
    )
    assert peer.peer() == {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "ops"}},
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "engram-operator", "app.kubernetes.io/instance": "x"}
        },
    }
    # An empty selector would admit every pod of the operator's namespace.
    for bad in ("", "app", "=x", "a=b,,"):
        with pytest.raises(SelectorError):
            parse_selector(bad)


# --- deciding: create, rewrite, delete ---


def observed(cluster: ClusterSpec, current: dict[str, str] | None) -> Observed:
    return Observed(nodes=[], pods=[], network_policies=current)


def decided(cluster: ClusterSpec, current: dict[str, str] | None) -> Plan:
    plan = Plan()
    plan_network_policies(cluster, observed(cluster, current), plan, OPERATOR)
    return plan


def hashes(cluster: ClusterSpec) -> dict[str, str]:
    return policy_hashes(build_network_policies(cluster, OPERATOR))


def test_a_new_cluster_gets_both_policies_and_an_unchanged_one_is_left_alone() -> None:
    cluster = spec()
    plan = decided(cluster, {})
    assert sorted(p["metadata"]["name"] for p in plan.create) == ["demo-engine", "demo-journal"]
    again = decided(cluster, hashes(cluster))
    assert (again.create, again.update_policies, again.delete_policies) == ([], [], [])


def test_a_changed_spec_network_rewrites_only_the_policy_it_changes() -> None:
    before = spec()
    after = spec(network={"clients": [{"podSelector": {"matchLabels": {"app": "shop"}}}]})
    plan = decided(after, hashes(before))
    assert [p["metadata"]["name"] for p in plan.update_policies] == ["demo-engine"]
    assert plan.create == [] and plan.delete_policies == []
    # A policy without the operator's hash (edited, or made by an older operator) is rewritten.
    assert len(decided(before, dict.fromkeys(hashes(before), "")).update_policies) == 2


def test_turning_policies_off_deletes_the_ones_the_operator_made() -> None:
    plan = decided(spec(network={"policies": False}), hashes(spec()))
    assert plan.delete_policies == ["demo-engine", "demo-journal"]
    assert plan.create == [] and plan.update_policies == []
    # Off and none left: nothing to do.
    assert decided(spec(network={"policies": False}), {}).delete_policies == []


def test_policies_that_could_not_be_listed_are_left_alone() -> None:
    plan = decided(spec(network={"policies": False}), None)
    assert (plan.create, plan.update_policies, plan.delete_policies) == ([], [], [])


def test_a_running_cluster_with_its_policies_plans_nothing_for_them() -> None:
    cluster = spec(shards=2)
    plan = decide(cluster, running(cluster))
    assert not [o for o in plan.create if o["kind"] == "NetworkPolicy"]
    assert plan.update_policies == [] and plan.delete_policies == []


# --- the spec and the CRD ---


def test_spec_network_is_admitted_and_reaches_the_spec() -> None:
    peer = {
        "namespaceSelector": {"matchLabels": {"team": "shop"}},
        "podSelector": {"matchLabels": {"app": "x"}},
    }
    body = {"apiVersion": "engram.io/v1alpha1", "kind": "MemoryCluster", "metadata": {"name": "demo"}}
    stored, errors = admit({**body, "spec": {"network": {"clients": [peer], "metrics": [peer]}}})
    assert errors == []
    parsed = ClusterSpec.from_body(stored)
    assert parsed.network.policies is True
    assert parsed.network.clients == (peer,) and parsed.network.metrics == (peer,)
    stored, errors = admit({**body, "spec": {}})
    assert stored["spec"]["network"] == {"policies": True}
    assert ClusterSpec.from_body(stored).network.clients is None


@pytest.mark.parametrize(
    ("network", "words"),
    [
        # In a NetworkPolicy an empty list admits everyone: refused rather than read as "nobody".
        ({"clients": []}, "should be non-empty"),
        ({"metrics": [{"podSelector": {"matchLabel": {"a": "b"}}}]}, "'matchLabel' was unexpected"),
        ({"policies": "no"}, "is not of type 'boolean'"),
    ],
)
def test_a_bad_spec_network_is_refused(network: dict[str, Any], words: str) -> None:
    body = {"apiVersion": "engram.io/v1alpha1", "kind": "MemoryCluster", "metadata": {"name": "demo"}}
    _, errors = admit({**body, "spec": {"network": network}})
    assert len(errors) == 1 and words in errors[0], errors


@pytest.mark.parametrize("field_name", ["clients", "metrics"])
def test_peers_embed_the_networkpolicypeer_schema(field_name: str) -> None:
    network = crd_schema(memorycluster_crd())["properties"]["spec"]["properties"]["network"]
    items = network["properties"][field_name]["items"]
    assert items == core_structural_schema("NetworkPolicyPeer", "networking.v1")


# --- acting: the reconcile against a fake API ---


class PolicyApi:
    """Only what a reconcile asks about NetworkPolicies; the rest of the cluster does not exist yet."""

    def __init__(self, policies: dict[str, dict[str, Any]] | None) -> None:
        self.policies = policies
        self.calls: list[tuple[str, str]] = []

    async def list_network_policies(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        if self.policies is None:
            raise ApiException(status=403, reason="Forbidden")
        return list(self.policies.values())

    async def replace_network_policy(self, obj: dict[str, Any]) -> None:
        self.calls.append(("update", obj["metadata"]["name"]))

    async def delete_network_policy(self, namespace: str, name: str) -> None:
        self.calls.append(("delete", name))


def execute(cluster: ClusterSpec, api: PolicyApi, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    for name in ("list_network_policies", "replace_network_policy", "delete_network_policy"):
        monkeypatch.setattr(kube, name, getattr(api, name))
    current, error = asyncio.run(reconcile.network_policies(cluster))
    seen = Observed(nodes=[], pods=[], network_policies=current, network_error=error)
    plan = Plan()
    plan_network_policies(cluster, seen, plan, OPERATOR)
    return asyncio.run(reconcile.execute(cluster, plan, seen, logging.getLogger("test")))


def test_the_off_switch_deletes_the_policies_through_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    existing = {p["metadata"]["name"]: p for p in build_network_policies(spec(), OPERATOR)}
    api = PolicyApi(existing)
    assert execute(spec(network={"policies": False}), api, monkeypatch) == []
    assert api.calls == [("delete", "demo-engine"), ("delete", "demo-journal")]


def test_a_changed_policy_is_replaced_through_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    existing = {p["metadata"]["name"]: p for p in build_network_policies(spec(), OPERATOR)}
    api = PolicyApi(existing)
    assert execute(spec(network={"metrics": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}), api, monkeypatch) == []
    assert api.calls == [("update", "demo-engine"), ("update", "demo-journal")]


def test_policies_the_operator_may_not_list_are_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    api = PolicyApi(None)
    [problem] = execute(spec(network={"policies": False}), api, monkeypatch)
    assert problem.reason == "NetworkPolicyReadFailed" and "403" in problem.message
    assert api.calls == []
