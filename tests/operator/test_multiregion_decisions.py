"""A MultiRegionCluster's decisions, builders and status: the regions' MemoryClusters, link Secrets
and leafnode Services it makes, what it refuses, and what its status says."""

from __future__ import annotations

from typing import Any

from k8s_offline import admit, validate_manifest
from test_multiregion_spec import mrc

from engram_operator import builders, labels
from engram_operator.builders.engine import valkey_args
from engram_operator.builders.multiregion import region_labels
from engram_operator.decisions.multiregion import ObservedRegions, RegionCluster, decide_regions
from engram_operator.multiregion_spec import Layout, MultiRegionSpec
from engram_operator.multiregion_status import build_multiregion_status
from engram_operator.observe import SecretData
from engram_operator.spec import ClusterSpec

LINK = SecretData("shop-link", found=True, data={"user": b"link", "password": b"s3cret"})


def spec(body: dict[str, Any] | None = None) -> MultiRegionSpec:
    stored, errors = admit(body or mrc())
    assert errors == []
    return MultiRegionSpec.from_body(stored)


def made(obj: dict[str, Any], uid: str) -> RegionCluster:
    """A region MemoryCluster the plan created, as the API server stores it."""
    stored, errors = admit(obj)
    assert errors == [], errors
    return RegionCluster(True, uid, obj["metadata"]["labels"], stored["spec"], {})


def test_first_pass_creates_one_memorycluster_per_local_region_with_its_region_section() -> None:
    plan = decide_regions(spec(), ObservedRegions(link_secret=LINK))
    assert plan.refused == [] and plan.layout is not None
    clusters = {o["metadata"]["name"]: o for o in plan.create}
    assert set(clusters) == {"shop-east", "shop-west"}
    east = ClusterSpec.from_body(clusters["shop-east"])
    assert east.namespace == "shop-east" and east.shards == 2 and east.region is not None
    assert east.region.name == "east" and east.region.linked_regions == {"west": "shop-west"}
    assert east.region.auth_secret == "shop-east-link" and east.region.managed_by == "shop/shop"
    # Its own URLs are one per journal server's leafnode Service.
    own = east.region.member("east")
    assert own is not None and own.leafnode_urls == tuple(
        f"nats-leaf://shop-east-leafnode-{i}.shop-east.svc.cluster.local:7422" for i in range(3)
    )
    for obj in plan.create:
        assert admit(obj)[1] == []
        assert obj["metadata"]["labels"][labels.MULTIREGION] == "shop"
        # Another namespace: no owner reference can point there; the finalizer deletes it.
        assert "ownerReferences" not in obj["metadata"]


def test_a_region_in_the_multiregionclusters_own_namespace_is_owned_by_reference() -> None:
    plan = decide_regions(spec(mrc([{"name": "east"}, {"name": "west"}])), ObservedRegions(link_secret=LINK))
    owners = [o["metadata"]["ownerReferences"][0] for o in plan.create]
    assert {(o["kind"], o["name"], o["uid"]) for o in owners} == {("MultiRegionCluster", "shop", "mrc-uid")}


def test_once_made_the_link_secrets_and_the_listeners_leafnode_services_follow() -> None:
    mr = spec(mrc(link={"secretName": "shop-link", "tls": {"secretName": "shop-tls"}}))
    tls = SecretData("shop-tls", found=True, data={"tls.crt": b"C", "tls.key": b"K", "ca.crt": b"A"})
    first = decide_regions(mr, ObservedRegions(link_secret=LINK, tls_secret=tls))
    clusters = {
        o["metadata"]["labels"][labels.REGION]: made(o, f"uid-{i}") for i, o in enumerate(first.create)
    }
    plan = decide_regions(mr, ObservedRegions(clusters=clusters, link_secret=LINK, tls_secret=tls))
    assert plan.refused == [] and plan.update == []
    created = {(o["metadata"]["namespace"], o["kind"], o["metadata"]["name"]) for o in plan.create}
    assert created == {
        ("shop-east", "Secret", "shop-east-link"),
        ("shop-east", "Secret", "shop-east-link-tls"),
        ("shop-west", "Secret", "shop-west-link"),
        ("shop-west", "Secret", "shop-west-link-tls"),
        # Every region listens for the others' links.
        *{("shop-east", "Service", f"shop-east-leafnode-{i}") for i in range(3)},
        *{("shop-west", "Service", f"shop-west-leafnode-{i}") for i in range(3)},
    }
    for obj in plan.create:
        validate_manifest(obj)
        assert obj["metadata"]["ownerReferences"][0]["uid"] in ("uid-0", "uid-1")
    service = next(o for o in plan.create if o["kind"] == "Service")
    assert service["spec"]["selector"][labels.JOURNAL_SERVER] in "012"
    assert service["spec"]["ports"] == [{"name": "leafnode", "port": 7422, "targetPort": "leafnode"}]
    # Made once: nothing is made again.
    children = frozenset(created)
    again = decide_regions(
        mr, ObservedRegions(clusters=clusters, link_secret=LINK, tls_secret=tls, children=children)
    )
    assert again.create == [] and again.update == []


def test_a_missing_link_secret_is_waited_for_and_copies_nothing() -> None:
    mr = spec()
    first = decide_regions(mr, ObservedRegions())
    clusters = {o["metadata"]["labels"][labels.REGION]: made(o, "u") for o in first.create}
    plan = decide_regions(mr, ObservedRegions(clusters=clusters, link_secret=SecretData("shop-link")))
    assert not [o for o in plan.create if o["kind"] == "Secret"]
    assert any("spec.link.secretName: Secret shop/shop-link does not exist yet" in w for w in plan.waiting)
    status = build_multiregion_status(mr, ObservedRegions(clusters=clusters), plan, {}, 1)
    linked = next(c for c in status["conditions"] if c["type"] == "Linked")
    assert linked["status"] == "False" and linked["reason"] == "LinkSecretMissing"


def test_a_template_change_updates_every_regions_memorycluster() -> None:
    mr = spec()
    clusters = {
        o["metadata"]["labels"][labels.REGION]: made(o, "u")
        for o in decide_regions(mr, ObservedRegions(link_secret=LINK)).create
    }
    changed = spec(mrc(template={"shards": 2, "engine": {"logLevel": "debug"}}))
    plan = decide_regions(changed, ObservedRegions(clusters=clusters, link_secret=LINK))
    assert [(ns, name) for ns, name, _ in plan.update] == [
        ("shop-east", "shop-east"),
        ("shop-west", "shop-west"),
    ]
    assert all(s["engine"]["logLevel"] == "debug" and s["region"]["name"] for _, _, s in plan.update)


def test_a_memorycluster_made_outside_it_is_never_linked_in() -> None:
    foreign = RegionCluster(True, "x", {"app.kubernetes.io/name": "engram"}, {"shards": 2}, {})
    plan = decide_regions(spec(), ObservedRegions(clusters={"east": foreign}, link_secret=LINK))
    assert plan.create == [] and plan.update == []
    assert (
        "MemoryCluster shop-east/shop-east exists and was not made by this MultiRegionCluster"
        in plan.refused[0]
    )
    status = build_multiregion_status(spec(), ObservedRegions(), plan, {}, 3)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (
        degraded["status"] == "True" and degraded["reason"] == "SpecRefused" and status["phase"] == "Degraded"
    )


def test_a_refused_spec_changes_nothing_and_posts_one_warning() -> None:
    running = Layout.of(spec())
    plan = decide_regions(
        spec(mrc(template={"shards": 3})), ObservedRegions(layout=running, link_secret=LINK)
    )
    assert plan.create == [] and plan.update == [] and plan.layout is None
    assert [e.reason for e in plan.events] == ["SpecRefused"] and plan.events[0].standing
    status = build_multiregion_status(
        spec(), ObservedRegions(layout=running), plan, {"layout": running.to_status()}, 2
    )
    assert status["layout"] == running.to_status()


def _ready(cluster: RegionCluster) -> RegionCluster:
    status = {"phase": "Ready", "readyNodes": "4/4", "conditions": [{"type": "Ready", "status": "True"}]}
    return RegionCluster(True, cluster.uid, cluster.labels, cluster.spec, status)


def _row(
    shard: int, source: str, not_copied: int | None, idle: float | None, error: str = ""
) -> dict[str, Any]:
    return {
        "shard": shard,
        "from": source,
        "not_copied": not_copied,
        "not_applied": 0,
        "idle": idle,
        "error": error,
    }


def test_status_shows_each_region_the_lag_of_every_pair_and_shard_and_the_conditions() -> None:
    mr = spec()
    clusters = {
        o["metadata"]["labels"][labels.REGION]: _ready(made(o, "u"))
        for o in decide_regions(mr, ObservedRegions(link_secret=LINK)).create
    }
    lag = {
        "east": [_row(0, "west", 0, 0.4), _row(1, "west", 3, 1.0)],
        "west": [_row(0, "east", 7, 0.2), _row(1, "east", 0, 0.3)],
    }
    seen = ObservedRegions(clusters=clusters, link_secret=LINK, lag=lag)
    status = build_multiregion_status(mr, seen, decide_regions(mr, seen), {}, 1)
    assert status["phase"] == "Ready" and status["readyRegions"] == "2/2" and status["regionCount"] == 2
    assert status["maxLag"] == 7
    assert {(r["region"], r["from"], r["shard"], r["notCopied"]) for r in status["lag"]} == {
        ("east", "west", 0, 0),
        ("east", "west", 1, 3),
        ("west", "east", 0, 7),
        ("west", "east", 1, 0),
    }
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {
        "Linked": ("True", "Linked"),
        "RegionsReady": ("True", "AllReady"),
        "Degraded": ("False", "AsSpecified"),
    }
    east = next(r for r in status["regions"] if r["name"] == "east")
    assert east["phase"] == "Ready" and east["ready"] and len(east["leafnodeURLs"]) == 3


def test_a_link_gone_quiet_turns_linked_false_naming_the_pair() -> None:
    mr = spec()
    clusters = {
        o["metadata"]["labels"][labels.REGION]: _ready(made(o, "u"))
        for o in decide_regions(mr, ObservedRegions(link_secret=LINK)).create
    }
    lag = {
        "east": [_row(0, "west", 0, 0.4), _row(1, "west", 0, 0.4)],
        "west": [_row(0, "east", None, 95.0), _row(1, "east", None, None, "no inbound stream yet")],
    }
    seen = ObservedRegions(clusters=clusters, link_secret=LINK, lag=lag)
    status = build_multiregion_status(mr, seen, decide_regions(mr, seen), {}, 1)
    linked = next(c for c in status["conditions"] if c["type"] == "Linked")
    assert linked["status"] == "False" and linked["reason"] == "LinkDown"
    assert "west from east shard 0: nothing heard for 95.0s" in linked["message"]
    assert "no inbound stream yet" in linked["message"]


def test_region_labels_name_the_multiregioncluster_and_the_region() -> None:
    assert region_labels(spec(), "east")[labels.MULTIREGION_NAMESPACE] == "shop"


def test_counters_reach_every_regions_memorycluster_its_nodes_and_its_valkey() -> None:
    plan = decide_regions(spec(mrc(counters=["hits:*", "views:*"])), ObservedRegions(link_secret=LINK))
    assert plan.refused == [] and len(plan.create) == 2
    for obj in plan.create:
        assert obj["spec"]["region"]["counters"] == ["hits:*", "views:*"]
        stored, errors = admit(obj)
        assert errors == []
        cluster = ClusterSpec.from_body(stored)
        assert cluster.region is not None and cluster.region.counters == ("hits:*", "views:*")
        config = builders.build_node_config(cluster, f"{cluster.name}-0-0", 0, "", cluster_id="c")
        assert config.region == cluster.region.name and config.region_counters == ["hits:*", "views:*"]
        args = valkey_args(cluster)
        at = args.index("managed")
        assert args[at:at + 8] == [
            "managed", "1", "region", cluster.region.name, "counters", "hits:*", "counters", "views:*"
        ]


def test_a_counters_change_on_a_running_cluster_is_accepted_and_updates_every_region() -> None:
    mr = spec(mrc(counters=["hits:*"]))
    clusters = {
        o["metadata"]["labels"][labels.REGION]: made(o, "u")
        for o in decide_regions(mr, ObservedRegions(link_secret=LINK)).create
    }
    running = Layout.of(mr)
    for counters in (["hits:*", "views:*"], []):
        seen = ObservedRegions(clusters=clusters, link_secret=LINK, layout=running)
        plan = decide_regions(spec(mrc(counters=counters)), seen)
        assert plan.refused == [] and [e.reason for e in plan.events] == []
        assert [(ns, name) for ns, name, _ in plan.update] == [
            ("shop-east", "shop-east"),
            ("shop-west", "shop-west"),
        ]
        # Every other field of spec.region is as it was (the MemoryCluster's CEL keeps it so).
        for (ns, _, desired), before in zip(plan.update, clusters.values(), strict=True):
            assert desired["region"] == {**before.spec["region"], "counters": counters}, ns
    # Unchanged counters: nothing to update.
    unchanged = decide_regions(mr, ObservedRegions(clusters=clusters, link_secret=LINK, layout=running))
    assert unchanged.update == []


def test_ttls_reach_every_regions_memorycluster_its_nodes_and_its_valkey() -> None:
    body = mrc(counters=["hits:*"], ttls=["session:*", "cache:*"])
    plan = decide_regions(spec(body), ObservedRegions(link_secret=LINK))
    assert plan.refused == [] and len(plan.create) == 2
    for obj in plan.create:
        assert obj["spec"]["region"]["ttls"] == ["session:*", "cache:*"]
        stored, errors = admit(obj)
        assert errors == []
        cluster = ClusterSpec.from_body(stored)
        assert cluster.region is not None and cluster.region.ttls == ("session:*", "cache:*")
        config = builders.build_node_config(cluster, f"{cluster.name}-0-0", 0, "", cluster_id="c")
        assert config.region_ttls == ["session:*", "cache:*"] and config.region_counters == ["hits:*"]
        args = valkey_args(cluster)
        at = args.index("managed")
        assert args[at:at + 10] == [
            "managed", "1", "region", cluster.region.name, "counters", "hits:*",
            "ttls", "session:*", "ttls", "cache:*",
        ]
    # Without spec.ttls the section still says so (an empty list), and Valkey gets no ttls argument.
    [plain, *_] = decide_regions(spec(mrc()), ObservedRegions(link_secret=LINK)).create
    assert plain["spec"]["region"]["ttls"] == [] and "ttls" not in valkey_args(ClusterSpec.from_body(plain))


def test_a_ttls_change_on_a_running_cluster_is_accepted_and_updates_every_region() -> None:
    mr = spec(mrc(counters=["hits:*"], ttls=["session:*"]))
    clusters = {
        o["metadata"]["labels"][labels.REGION]: made(o, "u")
        for o in decide_regions(mr, ObservedRegions(link_secret=LINK)).create
    }
    running = Layout.of(mr)
    for ttls in (["session:*", "cache:*"], []):
        seen = ObservedRegions(clusters=clusters, link_secret=LINK, layout=running)
        plan = decide_regions(spec(mrc(counters=["hits:*"], ttls=ttls)), seen)
        assert plan.refused == [] and [e.reason for e in plan.events] == []
        assert [(ns, name) for ns, name, _ in plan.update] == [
            ("shop-east", "shop-east"),
            ("shop-west", "shop-west"),
        ]
        # Every other field of spec.region, counters included, is as it was.
        for (ns, _, desired), before in zip(plan.update, clusters.values(), strict=True):
            assert desired["region"] == {**before.spec["region"], "ttls": ttls}, ns
    # Unchanged ttls: nothing to update.
    unchanged = decide_regions(mr, ObservedRegions(clusters=clusters, link_secret=LINK, layout=running))
    assert unchanged.update == []
