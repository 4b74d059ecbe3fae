"""The MultiRegionCluster act layer (multiregion_reconcile.py) and its kopf handlers, driven end to
end against an in-memory Kubernetes API that admits what it is sent as the API server would.

Nothing here reaches a cluster or a journal: the kube functions the act layer calls are replaced
by FakeKube's, and a region's journal (reached through Kubernetes DNS in a cluster) never answers.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
from typing import Any

import kopf
import nats
import pytest
from k8s_offline import admit, validate_manifest
from kubernetes.client.exceptions import ApiException
from test_multiregion_spec import mrc

from engram.multiregion.lag import RegionJournal, read_lags
from engram_operator import GROUP, MULTIREGION_PLURAL, VERSION, kube, labels, multiregion_reconcile, reconcile
from engram_operator.decisions.multiregion import RegionPlan
from engram_operator.decisions.plan import Event
from engram_operator.handlers.handle_multiregion import delete_multiregion
from engram_operator.node_cache import NodeCache
from engram_operator.spec import ClusterSpec

LOG = logging.getLogger("test")
REGION_CLUSTERS = {("shop-east", "shop-east"), ("shop-west", "shop-west")}
LINK_DATA = {"user": b"link", "password": b"s3cret"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies kopf's status patches and patch_memorycluster_spec: maps
    merge key by key, null removes a key, anything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeKube:
    """The kube functions multiregion_reconcile calls, over objects kept in memory.

    What is created or patched is first admitted as the API server would (built-in kinds against
    their published schemas, MemoryClusters against the CRD's schema, defaults and CEL rules, with
    the stored object as oldSelf on a patch): an object a real server refuses fails the test.
    """

    def __init__(self) -> None:
        # (namespace, name) -> the object as stored (a MemoryCluster with its CRD's defaults).
        self.memoryclusters: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        # (namespace, kind, name) of every object created, in order.
        self.created: list[tuple[str, str, str]] = []
        self.patched: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        # (kind, name) -> the error the API server answers a create of it with.
        self.refuse: dict[tuple[str, str], ApiException] = {}
        # Every call, reads included: an annotation that pauses the reconcile must make none.
        self.calls = 0
        # The MemoryClusters whose journal the lag reading tried to reach.
        self.dialled: list[str] = []
        # Service name -> the error the API server answers a read of it with.
        self.refuse_read: dict[str, ApiException] = {}
        self.nodes: list[dict[str, Any]] = []
        # The error the API server answers a list of the Nodes with (None: it lists them).
        self.refuse_nodes: ApiException | None = None
        self.next_node_port = 30000

    def changes(self) -> tuple[int, int, int]:
        return len(self.created), len(self.patched), len(self.deleted)

    async def get_memorycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        found = self.memoryclusters.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def create_memorycluster(self, obj: dict[str, Any]) -> bool:
        self.calls += 1
        meta = obj["metadata"]
        stored, errors = admit(obj)
        assert errors == [], errors
        if error := self.refuse.get(("MemoryCluster", meta["name"])):
            raise error
        key = (meta["namespace"], meta["name"])
        if key in self.memoryclusters:
            return False
        stored["metadata"] = {**stored["metadata"], "uid": f"uid-{meta['name']}", "generation": 1}
        self.memoryclusters[key] = stored
        self.created.append((meta["namespace"], "MemoryCluster", meta["name"]))
        return True

    async def patch_memorycluster_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.calls += 1
        old = self.memoryclusters.get((namespace, name))
        if old is None:
            raise ApiException(status=404, reason="Not Found")
        new = {**copy.deepcopy(old), "spec": merge_patch(old["spec"], spec)}
        stored, errors = admit(new, old=old)
        assert errors == [], errors
        stored["metadata"]["generation"] += 1
        self.memoryclusters[(namespace, name)] = stored
        self.patched.append((namespace, name))

    async def delete_memorycluster(self, namespace: str, name: str) -> None:
        self.calls += 1
        self.deleted.append((namespace, name))
        # Its own finalizer (the MemoryCluster's delete handler) keeps it a while: marked only.
        if (found := self.memoryclusters.get((namespace, name))) is not None:
            found["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"

    def finish_deletions(self) -> None:
        """The MemoryClusters' own finalizers are done: the API server removes them."""
        self.memoryclusters = {
            k: v for k, v in self.memoryclusters.items() if "deletionTimestamp" not in v["metadata"]
        }

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        found = self.secrets.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def service_exists(self, namespace: str, name: str) -> bool:
        self.calls += 1
        return (namespace, name) in self.services

    async def read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        if error := self.refuse_read.get(name):
            raise error
        found = self.services.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def list_nodes(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.refuse_nodes is not None:
            raise self.refuse_nodes
        return copy.deepcopy(self.nodes)

    async def create(self, obj: dict[str, Any]) -> bool:
        self.calls += 1
        validate_manifest(obj)
        kind, meta = obj["kind"], obj["metadata"]
        if error := self.refuse.get((kind, meta["name"])):
            raise error
        store = {"Secret": self.secrets, "Service": self.services}[kind]
        key = (meta["namespace"], meta["name"])
        if key in store:
            return False
        store[key] = copy.deepcopy(obj)
        if kind == "Service" and obj["spec"].get("type") in ("NodePort", "LoadBalancer"):
            # The API server allocates each port of such a Service a nodePort.
            for port in store[key]["spec"]["ports"]:
                port["nodePort"] = self.next_node_port
                self.next_node_port += 1
        self.created.append((meta["namespace"], kind, meta["name"]))
        return True

    async def connect(self, cluster: ClusterSpec) -> None:
        """A region's journal, which never answers here (no Kubernetes DNS, no journal)."""
        self.dialled.append(cluster.name)

    def put_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None:
        """A Secret a user applied, as the API returns it (values base64)."""
        self.secrets[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }

    def mark_ready(self) -> None:
        """Every region's MemoryCluster reports itself Ready (its own reconcile's status)."""
        for cluster in self.memoryclusters.values():
            cluster["status"] = {
                "phase": "Ready",
                "readyNodes": "2/2",
                "conditions": [{"type": "Ready", "status": "True"}],
            }


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    fake = FakeKube()
    for name in (
        "get_memorycluster",
        "create_memorycluster",
        "patch_memorycluster_spec",
        "delete_memorycluster",
        "get_secret",
        "service_exists",
        "read_service",
        "create",
    ):
        monkeypatch.setattr(kube, name, getattr(fake, name))
    # The lag is read through each region's journal Service by its cluster DNS name, which does
    # not resolve here: the connection is replaced, so no network is attempted and the real
    # region_lag / read_lags run with every journal away.
    monkeypatch.setattr(multiregion_reconcile, "_connect", fake.connect)
    # Leafnode Services are read whole (for a LoadBalancer or NodePort region's addresses), and the
    # Nodes through the operator's shared list: a fresh one, listed every time, per test.
    monkeypatch.setattr(reconcile, "NODES", NodeCache(fake.list_nodes, ttl=0))
    return fake


def applied(
    body: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1
) -> dict[str, Any]:
    """A MultiRegionCluster as kopf hands it to a handler: admitted with its CRD's defaults, plus
    the status the previous passes wrote."""
    stored, errors = admit(body)
    assert errors == [], errors
    stored["metadata"] = {**stored["metadata"], "generation": generation}
    if status:
        stored["status"] = status
    return stored


class Passes:
    """Reconciles of one MultiRegionCluster, one after the other as kopf runs them: the same memo,
    and each pass seeing the status the ones before wrote (merged as kopf's patch is)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.memo: dict[str, Any] = {}

    def run(self) -> tuple[RegionPlan | None, dict[str, Any], list[Event]]:
        patch: dict[str, Any] = {}
        events: list[Event] = []
        plan = asyncio.run(
            multiregion_reconcile.reconcile_regions(self.body, patch, events.append, LOG, self.memo)
        )
        if patch:
            status = merge_patch(self.body.get("status") or {}, patch)
            # The status subresource validates against the CRD's status schema too.
            assert admit({**self.body, "status": status})[1] == []
            self.body = {**self.body, "status": status}
        return plan, patch, events

    def respec(self, body: dict[str, Any]) -> None:
        """The user applies a new spec; the CRD admits it against the stored one (oldSelf)."""
        stored, errors = admit(body, old=self.body)
        assert errors == [], errors
        meta = self.body["metadata"]
        stored["metadata"] = {**stored["metadata"], "generation": meta["generation"] + 1}
        self.body = {**stored, "status": self.body.get("status") or {}}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def converged(api: FakeKube, body: dict[str, Any] | None = None) -> Passes:
    """A MultiRegionCluster whose regions and their children have all been made."""
    api.put_secret("shop", "shop-link", LINK_DATA)
    passes = Passes(applied(body or mrc()))
    passes.run()
    passes.run()
    return passes


def test_the_first_pass_creates_one_memorycluster_per_local_region_and_nothing_else(api: FakeKube) -> None:
    api.put_secret("shop", "shop-link", LINK_DATA)
    plan, status, events = Passes(applied(mrc())).run()
    assert plan is not None and plan.refused == []
    # A region's Secrets and Services are owned by its MemoryCluster, whose uid is not known yet.
    assert {(ns, name) for ns, kind, name in api.created if kind == "MemoryCluster"} == REGION_CLUSTERS
    assert len(api.created) == 2 and api.secrets.keys() == {("shop", "shop-link")} and api.services == {}
    for (_, name), cluster in api.memoryclusters.items():
        region = name.removeprefix("shop-")
        assert cluster["spec"]["region"]["name"] == region
        assert cluster["spec"]["region"]["managedBy"] == "shop/shop"
        assert cluster["metadata"]["labels"][labels.MULTIREGION] == "shop"
        assert cluster["metadata"]["labels"][labels.MULTIREGION_NAMESPACE] == "shop"
        assert ClusterSpec.from_body(cluster).region is not None
    assert status["phase"] == "Reconciling" and status["readyRegions"] == "0/2"
    assert status["layout"]["regions"] == [
        {"name": "east", "at": "shop-east/shop-east"},
        {"name": "west", "at": "shop-west/shop-west"},
    ]
    assert [w for w in status["waiting"] if "creating MemoryCluster" in w] == [
        "region east: creating MemoryCluster shop-east/shop-east",
        "region west: creating MemoryCluster shop-west/shop-west",
    ]
    assert events == [] and api.dialled == []


def test_the_second_pass_copies_the_link_secret_and_adds_leafnode_services_and_the_third_makes_nothing(
    api: FakeKube,
) -> None:
    api.put_secret("shop", "shop-link", LINK_DATA)
    passes = Passes(applied(mrc()))
    passes.run()
    api.created.clear()
    _, status, _ = passes.run()
    made = set(api.created)
    assert len(made) == len(api.created)  # each once
    assert made == {
        ("shop-east", "Secret", "shop-east-link"),
        ("shop-west", "Secret", "shop-west-link"),
        *{("shop-east", "Service", f"shop-east-leafnode-{i}") for i in range(3)},
        *{("shop-west", "Service", f"shop-west-leafnode-{i}") for i in range(3)},
    }
    for namespace, name in REGION_CLUSTERS:
        copied = api.secrets[(namespace, f"{name}-link")]
        assert copied["data"] == api.secrets[("shop", "shop-link")]["data"]
        # Owned by the region's MemoryCluster, so it goes with it.
        assert copied["metadata"]["ownerReferences"][0]["uid"] == f"uid-{name}"
    assert api.patched == [] and api.deleted == []
    # Each region's journal was asked for its lag, did not answer, and says so row by row.
    assert sorted(api.dialled) == ["shop-east", "shop-west"]
    assert {(r["region"], r["from"], r["shard"]) for r in status["lag"]} == {
        ("east", "west", 0), ("east", "west", 1), ("west", "east", 0), ("west", "east", 1),
    }
    assert all(r["error"] == f"region {r['region']}'s journal does not answer" for r in status["lag"])
    assert conditions(status)["Linked"] == ("False", "LinkDown")

    api.created.clear()
    api.mark_ready()
    plan, status, events = passes.run()
    assert plan is not None and plan.create == [] and plan.update == []
    assert api.created == [] and api.patched == [] and events == []
    assert status["readyRegions"] == "2/2" and status["phase"] == "Ready"
    assert conditions(status)["RegionsReady"] == ("True", "AllReady")


def test_a_missing_link_secret_is_waited_for_and_a_bad_one_is_warned_of_once_across_passes(
    api: FakeKube,
) -> None:
    passes = Passes(applied(mrc()))
    for _ in range(3):
        _, status, events = passes.run()
        assert "spec.link.secretName: Secret shop/shop-link does not exist yet" in status["waiting"]
        assert conditions(status)["Linked"] == ("False", "LinkSecretMissing")
        # A wait is shown in the status; the regions' own MemoryClusters post their Waiting event.
        assert events == []
    # Everything but the link's copies is made meanwhile.
    assert not [c for c in api.created if c[1] == "Secret"]
    assert {(ns, kind) for ns, kind, _ in api.created} >= {("shop-east", "Service"), ("shop-west", "Service")}

    api.put_secret("shop", "shop-link", {"user": b"link"})
    warned = []
    for _ in range(3):
        _, status, events = passes.run()
        warned += [e for e in events if e.reason == "LinkSecretInvalid"]
        assert any("lacks password" in w for w in status["waiting"])
    [warning] = warned
    assert warning.type == "Warning" and warning.standing
    assert warning.message == "spec.link.secretName: Secret shop/shop-link lacks password"
    assert not [c for c in api.created if c[1] == "Secret"]

    api.put_secret("shop", "shop-link", LINK_DATA)
    _, status, events = passes.run()
    assert {name for _, kind, name in api.created if kind == "Secret"} == {"shop-east-link", "shop-west-link"}
    assert conditions(status)["Linked"] == ("False", "LinkDown") and events == []


def test_a_template_change_is_patched_into_every_regions_memorycluster(api: FakeKube) -> None:
    passes = converged(api)
    before = {k: copy.deepcopy(v["spec"]["region"]) for k, v in api.memoryclusters.items()}
    made = len(api.created)
    passes.respec(mrc(template={"shards": 2, "engine": {"logLevel": "debug"}}))
    plan, status, _ = passes.run()
    assert plan is not None and sorted(api.patched) == sorted(REGION_CLUSTERS)
    for key, cluster in api.memoryclusters.items():
        assert cluster["spec"]["engine"]["logLevel"] == "debug"
        # spec.region is fixed at creation (CEL): the patch carries it unchanged.
        assert cluster["spec"]["region"] == before[key]
    assert len(api.created) == made and status["observedGeneration"] == 2
    # The regions now hold the template: the next pass has nothing to patch.
    api.patched.clear()
    passes.run()
    assert api.patched == []


def test_a_counters_change_is_admitted_and_patched_into_every_regions_memorycluster(api: FakeKube) -> None:
    """Unlike a region-set change, spec.counters may change on a running cluster: both CRDs admit it
    (the MemoryCluster's CEL against its stored spec.region) and every region gets the new patterns."""
    passes = converged(api, mrc(counters=["hits:*"]))
    before = {k: copy.deepcopy(v["spec"]["region"]) for k, v in api.memoryclusters.items()}
    assert all(r["counters"] == ["hits:*"] for r in before.values())
    for counters in (["hits:*", "views:*"], []):
        api.patched.clear()
        passes.respec(mrc(counters=counters))
        plan, status, events = passes.run()
        assert plan is not None and plan.refused == [] and events == []
        assert sorted(api.patched) == sorted(REGION_CLUSTERS)
        assert conditions(status)["Degraded"][0] == "False"
        for key, cluster in api.memoryclusters.items():
            assert cluster["spec"]["region"] == {**before[key], "counters": counters}
            assert ClusterSpec.from_body(cluster).region.counters == tuple(counters)  # type: ignore[union-attr]
        api.patched.clear()
        passes.run()
        assert api.patched == []


def test_a_ttls_change_is_admitted_and_patched_into_every_regions_memorycluster(api: FakeKube) -> None:
    """spec.ttls, like spec.counters, may change on a running cluster: both CRDs admit it and every
    region gets the new patterns, its counters left as they were."""
    passes = converged(api, mrc(counters=["hits:*"], ttls=["session:*"]))
    before = {k: copy.deepcopy(v["spec"]["region"]) for k, v in api.memoryclusters.items()}
    assert all(r["ttls"] == ["session:*"] and r["counters"] == ["hits:*"] for r in before.values())
    for ttls in (["session:*", "cache:*"], []):
        api.patched.clear()
        passes.respec(mrc(counters=["hits:*"], ttls=ttls))
        plan, status, events = passes.run()
        assert plan is not None and plan.refused == [] and events == []
        assert sorted(api.patched) == sorted(REGION_CLUSTERS)
        assert conditions(status)["Degraded"][0] == "False"
        for key, cluster in api.memoryclusters.items():
            assert cluster["spec"]["region"] == {**before[key], "ttls": ttls}
            assert ClusterSpec.from_body(cluster).region.ttls == tuple(ttls)  # type: ignore[union-attr]
        api.patched.clear()
        passes.run()
        assert api.patched == []


def test_an_api_failure_on_create_is_reported_in_status_and_an_event_and_does_not_raise(
    api: FakeKube,
) -> None:
    api.put_secret("shop", "shop-link", LINK_DATA)
    api.refuse[("MemoryCluster", "shop-west")] = ApiException(status=404, reason="Not Found")
    _, status, events = Passes(applied(mrc())).run()
    assert api.created == [("shop-east", "MemoryCluster", "shop-east")]
    failure = "creating MemoryCluster shop-west/shop-west failed: 404 Not Found"
    assert [(e.type, e.reason, e.message) for e in events] == [("Warning", "ActionFailed", failure)]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["message"]) == ("True", "ActionFailed", failure)
    assert status["phase"] == "Degraded"


def test_regions_none_of_which_could_be_made_can_still_be_moved(api: FakeKube) -> None:
    """Neither namespace existed: nothing runs, so correcting them is not "changing the regions of a
    running cluster"; status.layout is recorded once a region's MemoryCluster exists."""
    api.put_secret("shop", "shop-link", LINK_DATA)
    for name in ("shop-east", "shop-west"):
        api.refuse[("MemoryCluster", name)] = ApiException(status=404, reason="Not Found")
    typos = [{"name": "east", "namespace": "esat"}, {"name": "west", "namespace": "wset"}]
    passes = Passes(applied(mrc(typos)))
    _, status, _ = passes.run()
    assert api.created == [] and "layout" not in status
    api.refuse.clear()
    passes.respec(mrc())
    plan, status, _ = passes.run()
    assert plan is not None and plan.refused == []
    assert {(ns, name) for ns, kind, name in api.created if kind == "MemoryCluster"} == REGION_CLUSTERS
    assert status["layout"]["regions"] == [
        {"name": "east", "at": "shop-east/shop-east"},
        {"name": "west", "at": "shop-west/shop-west"},
    ]


def test_once_one_region_is_made_the_others_places_are_fixed(api: FakeKube) -> None:
    """East's spec.region (fixed at creation) names west's place: moving west now would need a patch
    of it the CRD refuses, so the move is refused instead, and east is left as it is."""
    api.put_secret("shop", "shop-link", LINK_DATA)
    api.refuse[("MemoryCluster", "shop-west")] = ApiException(status=404, reason="Not Found")
    passes = Passes(applied(mrc()))
    _, status, _ = passes.run()
    assert status["layout"]["regions"][1] == {"name": "west", "at": "shop-west/shop-west"}
    east = copy.deepcopy(api.memoryclusters[("shop-east", "shop-east")])
    passes.respec(mrc([{"name": "east", "namespace": "shop-east"}, {"name": "west", "namespace": "shop-w"}]))
    plan, status, _ = passes.run()
    assert plan is not None and plan.refused and plan.update == []
    assert conditions(status)["Degraded"] == ("True", "SpecRefused")
    assert api.memoryclusters[("shop-east", "shop-east")] == east and api.patched == []


def test_six_regions_are_refused_and_change_nothing(api: FakeKube) -> None:
    body = mrc([{"name": n} for n in ("east", "west", "north", "south", "up", "down")])
    # The CRD refuses it; one admitted before that rule (or without it) must still change nothing.
    stored, errors = admit(body)
    assert any("spec.regions" in e for e in errors), errors
    stored["metadata"]["generation"] = 1
    memo: dict[str, Any] = {}
    posted = []
    for _ in range(2):
        patch: dict[str, Any] = {}
        events: list[Event] = []
        asyncio.run(multiregion_reconcile.reconcile_regions(stored, patch, events.append, LOG, memo))
        posted += events
        assert api.changes() == (0, 0, 0)
        assert patch["phase"] == "Degraded" and "layout" not in patch
        degraded = next(c for c in patch["conditions"] if c["type"] == "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "SpecRefused")
        assert degraded["message"] == "spec.regions: 6 regions: at most 5 can be linked"
    # A lasting refusal is posted once, not on every pass.
    assert [(e.type, e.reason) for e in posted] == [("Warning", "SpecRefused")]


def test_a_changed_region_set_against_status_layout_is_refused_and_changes_nothing(api: FakeKube) -> None:
    passes = converged(api)
    layout = passes.body["status"]["layout"]
    before, stored = api.changes(), copy.deepcopy(api.memoryclusters)
    # Same region names (the CRD's rule), but west moved to another namespace.
    passes.respec(mrc([{"name": "east", "namespace": "shop-east"}, {"name": "west"}]))
    posted = []
    for _ in range(2):
        plan, status, events = passes.run()
        posted += events
        assert plan is not None and plan.refused and plan.create == [] and plan.update == []
        assert api.changes() == before and api.memoryclusters == stored
        assert conditions(status)["Degraded"] == ("True", "SpecRefused")
        assert status["phase"] == "Degraded" and status["layout"] == layout
    [refusal] = posted
    assert refusal.type == "Warning" and "changing the regions of a running multi-region" in refusal.message


def external(east: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A MultiRegionCluster whose east region's leafnode Services are of type ``east``, and their
    (namespace, name) keys."""
    body = mrc([
        {"name": "east", "namespace": "shop-east", "leafnodeService": {"type": east}},
        {"name": "west", "namespace": "shop-west"},
    ])
    return body, [("shop-east", f"shop-east-leafnode-{i}") for i in range(3)]


def east_external(status: dict[str, Any]) -> tuple[list[str] | None, list[str]]:
    """East's externalLeafnodeURLs (None: no such field) and the waiting lines about them."""
    row = next(r for r in status["regions"] if r["name"] == "east")
    return row.get("externalLeafnodeURLs"), [w for w in status["waiting"] if "external leafnode" in w]


def test_a_load_balancer_regions_addresses_reach_the_status_once_each_service_has_one(api: FakeKube) -> None:
    body, keys = external("LoadBalancer")
    passes = converged(api, body)
    made = {(ns, name) for ns, kind, name in api.created if kind == "Service"}
    assert set(keys) <= made
    assert all(api.services[k]["spec"]["type"] == "LoadBalancer" for k in keys)
    _, status, _ = passes.run()
    urls, waits = east_external(status)
    assert urls == [] and len(waits) == 1 and "no load balancer address yet" in waits[0]
    for i, key in enumerate(keys):
        api.services[key]["status"] = {"loadBalancer": {"ingress": [{"ip": f"203.0.113.{10 + i}"}]}}
        validate_manifest(api.services[key])
    _, status, _ = passes.run()
    assert east_external(status) == ([f"nats-leaf://203.0.113.{10 + i}:7422" for i in range(3)], [])
    # West is ClusterIP: its Services are only looked up, never read whole.
    west = next(r for r in status["regions"] if r["name"] == "west")
    assert "externalLeafnodeURLs" not in west


def test_a_missing_or_unreadable_leafnode_service_leaves_the_addresses_unknown_and_the_pass_whole(
    api: FakeKube,
) -> None:
    body, keys = external("LoadBalancer")
    passes = converged(api, body)
    for key in keys:
        api.services[key]["status"] = {"loadBalancer": {"ingress": [{"hostname": f"{key[1]}.example.com"}]}}
    del api.services[keys[0]]
    api.refuse_read[keys[1][1]] = ApiException(status=500, reason="Internal Server Error")
    # An API server that fails the read would likely fail a create too: none is tried.
    api.refuse[("Service", keys[1][1])] = ApiException(status=500, reason="Internal Server Error")
    api.created.clear()
    plan, status, events = passes.run()
    assert plan is not None and plan.refused == []
    urls, [wait] = east_external(status)
    assert urls == []
    assert "shop-east/shop-east-leafnode-0: not made yet" in wait
    assert "shop-east/shop-east-leafnode-1: could not be read (500 Internal Server Error)" in wait
    # The missing one is made again; the unreadable one is left alone (it may well exist).
    assert api.created == [("shop-east", "Service", "shop-east-leafnode-0")]
    assert conditions(status)["Degraded"] == ("False", "AsSpecified") and events == []


def test_a_nodeport_region_is_dialled_at_its_nodes_and_an_unlisted_node_set_is_pending(api: FakeKube) -> None:
    body, keys = external("NodePort")
    api.nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": f"n{i}"},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": f"10.0.0.{i}"},
                              {"type": "ExternalIP", "address": f"198.51.100.{i}"}],
            },
        }
        for i in (1, 2)
    ]
    passes = converged(api, body)
    _, status, _ = passes.run()
    ports = [api.services[k]["spec"]["ports"][0]["nodePort"] for k in keys]
    assert east_external(status) == (
        [f"nats-leaf://198.51.100.{node}:{port}" for node, port in zip((1, 2, 1), ports, strict=True)], []
    )
    api.refuse_nodes = ApiException(status=403, reason="Forbidden")
    _, status, _ = passes.run()
    urls, [wait] = east_external(status)
    assert urls == [] and "the Nodes could not be listed (403 Forbidden)" in wait
    assert conditions(status)["Degraded"] == ("False", "AsSpecified")


def test_the_reconciliation_disabled_annotation_makes_it_do_nothing(api: FakeKube) -> None:
    api.put_secret("shop", "shop-link", LINK_DATA)
    body = mrc()
    body["metadata"]["annotations"] = {labels.RECONCILIATION: "disabled"}
    plan, status, events = Passes(applied(body)).run()
    assert plan is None and status == {} and events == []
    assert api.calls == 0 and api.changes() == (0, 0, 0)


def test_delete_regions_deletes_only_the_memoryclusters_it_made_and_counts_those_remaining(
    api: FakeKube,
) -> None:
    passes = converged(api)
    # West is taken over by a namesake MultiRegionCluster of another namespace: not ours.
    west = api.memoryclusters[("shop-west", "shop-west")]
    west["metadata"]["labels"][labels.MULTIREGION_NAMESPACE] = "other"
    # A third region whose MemoryCluster does not exist: nothing to delete there.
    body = passes.body
    body["spec"]["regions"].append({"name": "north", "namespace": "shop-north"})
    assert asyncio.run(multiregion_reconcile.delete_regions(body, LOG)) == 1
    assert api.deleted == [("shop-east", "shop-east")]
    # The handler holds the MultiRegionCluster's finalizer while its region is still going.
    with pytest.raises(kopf.TemporaryError, match="waiting for 1 region MemoryCluster"):
        asyncio.run(delete_multiregion(body=body, logger=LOG))
    api.finish_deletions()
    api.deleted.clear()
    assert asyncio.run(multiregion_reconcile.delete_regions(body, LOG)) == 0
    asyncio.run(delete_multiregion(body=body, logger=LOG))
    assert api.deleted == [] and ("shop-west", "shop-west") in api.memoryclusters


def test_with_no_reachable_journal_the_lag_rows_carry_an_error_rather_than_raising() -> None:
    regions = {
        "east": RegionJournal("east", "shop-east", 2, {"west": "shop-west"}),
        "west": RegionJournal("west", "shop-west", 2, {"east": "shop-east"}),
    }
    lags = asyncio.run(read_lags(regions, {"east": None, "west": None}, timeout=0.1))
    assert {r: [(row["from"], row["shard"]) for row in rows] for r, rows in lags.items()} == {
        "east": [("west", 0), ("west", 1)],
        "west": [("east", 0), ("east", 1)],
    }
    for region, rows in lags.items():
        for row in rows:
            assert row["error"] == f"region {region}'s journal does not answer"
            assert row["not_copied"] is None and row["not_applied"] is None and row["idle"] is None


def test_a_journal_that_does_not_answer_is_none_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    async def refused(servers: list[str], **_: Any) -> None:
        asked.append(servers)
        raise ConnectionRefusedError("no route")

    # Replaced before any connection is opened: no network is attempted.
    monkeypatch.setattr(nats, "connect", refused)
    cluster = ClusterSpec(name="shop-east", namespace="shop-east", uid="u")
    assert asyncio.run(multiregion_reconcile._connect(cluster)) is None
    assert asked == [["nats://shop-east-journal.shop-east.svc.cluster.local:4222"]]


def test_multiregion_handlers_are_registered_for_every_lifecycle_step() -> None:
    import engram_operator.main  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    resource = kopf.Resource(GROUP, VERSION, MULTIREGION_PLURAL)
    changing = {h.id.split("/")[0] for h in registry._changing.get_all_handlers()}
    assert {"converge_regions", "delete_multiregion"} <= changing
    assert any(h.id == "resync_regions" for h in registry._spawning.get_all_handlers())
    assert resource.plural == "multiregionclusters"
