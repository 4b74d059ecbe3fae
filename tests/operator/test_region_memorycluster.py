"""A region's MemoryCluster (spec.region, written by its MultiRegionCluster): its journal gets the
region's JetStream domain and link, its nodes the region and the other regions' clusters, and the
journal config is the one the local platform renders for the same layout, accepted by nats-server."""

from __future__ import annotations

import base64
import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, ZONES, nodes
from k8s_offline import admit, crd_schema, memorycluster_crd, validate_manifest

from engram import binaries
from engram.platforms.local import regions as local_regions
from engram.platforms.local.tls import LocalTLS
from engram_operator import builders, decisions
from engram_operator.builders.journal import plan_journal
from engram_operator.builders.region_link import LINK_TLS, OPEN_LINK, link_blocks
from engram_operator.observe import Observed, SecretData
from engram_operator.spec import ClusterSpec, region_problems
from engram_operator.status import build_status

WEST_URLS = [f"nats-leaf://shop-west-leafnode-{i}.shop-west.svc.cluster.local:7422" for i in range(3)]
EAST_URLS = [f"nats-leaf://shop-east-leafnode-{i}.shop-east.svc.cluster.local:7422" for i in range(3)]
AUTH = SecretData("shop-east-link", found=True, data={"user": b"link", "password": b"s3cret"})


def region(
    name: str, counters: list[str] | None = None, ttls: list[str] | None = None, **link: str
) -> dict[str, Any]:
    return {
        "name": name,
        "regions": [
            {"name": "east", "cluster": "shop-east", "leafnodeURLs": EAST_URLS},
            {"name": "west", "cluster": "shop-west", "leafnodeURLs": WEST_URLS},
        ],
        **({"link": link} if link else {}),
        "managedBy": "shop/shop",
        **({"counters": counters} if counters is not None else {}),
        **({"ttls": ttls} if ttls is not None else {}),
    }


def body_of(
    name: str = "east", counters: list[str] | None = None, ttls: list[str] | None = None, **link: str
) -> dict[str, Any]:
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": f"shop-{name}", "namespace": f"shop-{name}", "uid": "uid-1"},
        "spec": {"shards": 2, "region": region(name, counters, ttls, **link)},
    }


def cluster(
    name: str = "east", counters: list[str] | None = None, ttls: list[str] | None = None, **link: str
) -> ClusterSpec:
    stored, errors = admit(body_of(name, counters, ttls, **link))
    assert errors == [], errors
    return ClusterSpec.from_body(stored)


def test_the_crd_keeps_spec_region_fixed_and_refuses_adding_it_later() -> None:
    body = {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": "shop-east"},
        "spec": {"region": region("east")},
    }
    old = {**body, "spec": {}}
    assert any("spec.region cannot be added" in e for e in admit(body, old=old)[1])
    moved = {**body, "spec": {"region": {**region("east"), "name": "west"}}}
    assert any("fixed at creation" in e for e in admit(moved, old=body)[1])


def test_nodes_get_their_region_and_the_other_regions_clusters() -> None:
    config = builders.build_node_config(cluster(), "shop-east-0-0", 0, "zone-a", cluster_id=CLUSTER_ID)
    assert config.region == "east" and config.linked_regions == {"west": "shop-west"}


def valkey_command(spec: ClusterSpec) -> list[str]:
    """The command of an engine pod's Valkey container, which runs Valkey itself (not the node)."""
    pod = builders.build_engine_pod(
        spec, name=f"{spec.name}-0-0", shard=0, index=0, zone="zone-a", cluster_id=CLUSTER_ID
    )
    validate_manifest(pod)
    return next(c for c in pod["spec"]["containers"] if c["name"] == "valkey")["command"]


def test_a_regions_valkey_loads_the_module_in_region_mode_with_its_counters() -> None:
    """Regression: the node passes `region` only to a Valkey it spawns, and on Kubernetes Valkey has
    a container of its own: without these arguments a region's writes were not stamped or replicated."""
    command = valkey_command(cluster(counters=["hits:*", "views:?"]))
    at = command.index("managed")
    assert command[at - 2] == "--loadmodule"
    assert command[at:at + 8] == [
        "managed", "1", "region", "east", "counters", "hits:*", "counters", "views:?"
    ]
    without = valkey_command(cluster())
    at = without.index("managed")
    assert without[at:at + 4] == ["managed", "1", "region", "east"] and "counters" not in without
    alone, errors = admit({"apiVersion": "engram.io/v1alpha1", "kind": "MemoryCluster",
                           "metadata": {"name": "shop"}, "spec": {"shards": 2}})
    assert errors == []
    plain = valkey_command(ClusterSpec.from_body(alone))
    assert plain[plain.index("managed"):plain.index("managed") + 2] == ["managed", "1"]
    assert "region" not in plain and "counters" not in plain


def test_a_regions_valkey_gets_its_ttls_after_its_counters() -> None:
    """The same regression for `ttls`: without them on Valkey's own command line, the module would
    refuse every TTL on the region's keys."""
    command = valkey_command(cluster(counters=["hits:*"], ttls=["session:*", "cache:?"]))
    at = command.index("managed")
    assert command[at:at + 10] == [
        "managed", "1", "region", "east", "counters", "hits:*", "ttls", "session:*", "ttls", "cache:?"
    ]
    alone = valkey_command(cluster(ttls=["session:*"]))
    at = alone.index("managed")
    assert alone[at:at + 6] == ["managed", "1", "region", "east", "ttls", "session:*"]
    assert "counters" not in alone and "ttls" not in valkey_command(cluster())


def test_counters_reach_the_node_config_and_a_change_rolls_the_pods() -> None:
    spec = cluster(counters=["hits:*"])
    config = builders.build_node_config(spec, "shop-east-0-0", 0, "zone-a", cluster_id=CLUSTER_ID)
    assert config.region_counters == ["hits:*"]
    assert builders.build_node_config(cluster(), "p", 0, "z", cluster_id=CLUSTER_ID).region_counters == []
    # Valkey's command line changes: the normal rolling update restarts it with the new patterns.
    hashes = {builders.pod_spec_hash(cluster(counters=c)) for c in ([], ["hits:*"], ["hits:*", "views:*"])}
    assert len(hashes) == 3


def test_ttls_reach_the_node_config_and_a_change_rolls_the_pods() -> None:
    spec = cluster(counters=["hits:*"], ttls=["session:*"])
    config = builders.build_node_config(spec, "shop-east-0-0", 0, "zone-a", cluster_id=CLUSTER_ID)
    assert config.region_ttls == ["session:*"] and config.region_counters == ["hits:*"]
    assert builders.build_node_config(cluster(), "p", 0, "z", cluster_id=CLUSTER_ID).region_ttls == []
    hashes = {builders.pod_spec_hash(cluster(ttls=t)) for t in ([], ["session:*"], ["session:*", "cache:*"])}
    # The same patterns as counters instead are another command line, so another roll.
    hashes.add(builders.pod_spec_hash(cluster(counters=["session:*"])))
    assert len(hashes) == 4


def test_the_listening_regions_journal_has_its_domain_a_locked_leafnode_port_and_a_secret_config() -> None:
    east = cluster(authSecretName="shop-east-link")
    placements = plan_journal(ZONES, 3, "Required")
    secret = builders.build_journal_config(east, placements, link_auth=local_link_auth())
    validate_manifest(secret)
    assert secret["kind"] == "Secret"  # the link's password is in it
    text = base64.b64decode(secret["data"]["server-0.conf"]).decode()
    assert '  domain: "east"' in text and 'listen: "0.0.0.0:7422"' in text and 'user: "link-west"' in text
    sts = builders.build_journal_statefulset(east, placements[0])
    validate_manifest(sts)
    ports = sts["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "leafnode", "containerPort": 7422} in ports


def local_link_auth() -> Any:
    from engram_operator.builders.region_link import link_auth_of

    return link_auth_of(AUTH.data)


def test_a_region_journal_waits_for_its_link_secret_and_then_is_created() -> None:
    east = cluster(authSecretName="shop-east-link")
    waiting = decisions.decide(east, Observed(nodes=nodes(), pods=[], cluster_id=CLUSTER_ID))
    assert not [o for o in waiting.create if o["kind"] == "StatefulSet"]
    assert any("Secret shop-east-link" in w for w in waiting.waiting)
    ready = decisions.decide(east, Observed(nodes=nodes(), pods=[], cluster_id=CLUSTER_ID, link_auth=AUTH))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in ready.create}
    assert ("Secret", "shop-east-journal-config") in kinds and ("StatefulSet", "shop-east-journal-0") in kinds


def test_a_region_with_link_tls_mounts_the_certificate_in_its_journal_servers() -> None:
    west = cluster("west", authSecretName="shop-west-link", tlsSecretName="shop-west-link-tls")
    sts = builders.build_journal_statefulset(west, plan_journal(ZONES, 3, "Required")[0])
    validate_manifest(sts)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["link-tls"]["secret"]["secretName"] == "shop-west-link-tls"
    block = "\n".join(link_blocks(west.region, local_link_auth(), tls=True))  # type: ignore[arg-type]
    assert (
        f'ca_file: "{LINK_TLS.ca_file}"' in block
        and "nats-leaf://link-west:s3cret@shop-east-leafnode-0" in block
    )


FIXED = "spec.region is fixed at creation, but for spec.region.counters and spec.region.ttls"


def test_counters_and_ttls_may_change_on_a_running_region_and_nothing_else_of_spec_region_may() -> None:
    old, errors = admit(body_of(counters=["hits:*"], ttls=["session:*"]))
    assert errors == []
    for counters in (["hits:*", "views:*"], [], None):
        for ttls in (["session:*", "cache:*"], [], None):
            new = body_of(counters=counters, ttls=ttls)
            assert admit(new, old=old)[1] == [], (counters, ttls)
    changes: list[dict[str, Any]] = [
        {"name": "west"},
        {"regions": [{**r, "leafnodeURLs": r["leafnodeURLs"][:1]} for r in region("east")["regions"]]},
        {"link": {"authSecretName": "shop-east-link"}},
        {"managedBy": "shop/other"},
    ]
    for change in changes:
        new = copy.deepcopy(old)
        new["spec"]["region"].update(change)
        new["spec"]["region"]["counters"] = ["views:*"]
        new["spec"]["region"]["ttls"] = ["cache:*"]
        assert any(FIXED in e for e in admit(new, old=old)[1]), change
    # A field added or removed is a change too.
    linked, _ = admit(body_of(counters=["hits:*"], ttls=["session:*"], authSecretName="shop-east-link"))
    for before, after in ((linked, old), (old, linked)):
        assert any("fixed at creation" in e for e in admit(after, old=before)[1])
    unmanaged = copy.deepcopy(old)
    del unmanaged["spec"]["region"]["managedBy"]
    assert any("fixed at creation" in e for e in admit(unmanaged, old=old)[1])


def test_the_immutability_rule_names_every_field_of_spec_region_but_counters_and_ttls() -> None:
    """CEL cannot compare the section less some fields, so the rule lists the fields: a field added to
    spec.region must be added to it, or it could change on a running cluster."""
    section = crd_schema(memorycluster_crd())["properties"]["spec"]["properties"]["region"]
    [rule] = [r["rule"] for r in section["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    changeable = {"counters", "ttls"}
    assert changeable < set(section["properties"])
    for field in section["properties"]:
        assert (f"oldSelf.{field}" in rule) == (field not in changeable), field


@pytest.mark.parametrize("field", ["counters", "ttls"])
@pytest.mark.parametrize(
    ("patterns", "words"),
    [
        ([""], "should be non-empty"),
        (["hits *"], "does not match"),
        (["hits\t*"], "does not match"),
        (["x" * 201], "is too long"),
        ([f"k{i}:*" for i in range(65)], "is too long"),
        (["hits:*", "hits:*"], "Duplicate value"),
    ],
)
def test_the_crd_refuses_bad_key_patterns(field: str, patterns: list[str], words: str) -> None:
    body = body_of(**{field: patterns})
    _, errors = admit(body)
    assert any(f"spec.region.{field}" in e and words in e for e in errors), errors
    # The operator's own check, for an object admitted without the CRD's rules, refuses them too.
    problems = region_problems(ClusterSpec.from_body(body))
    prefix = f"spec.region.{field}: "
    assert problems and all(
        p.startswith(f"{prefix}a pattern") or p == f"{prefix}at most 64 patterns, got 65" for p in problems
    ), problems


@pytest.mark.parametrize(
    ("name", "section", "words"),
    [
        (
            "shop-west",
            {**region("west"), "name": "north"},
            "spec.region.regions must list this cluster's own region 'north'",
        ),
        (
            "shop-east",
            {
                **region("east"),
                "regions": [{"name": "east", "cluster": "other"}, {"name": "west", "cluster": "shop-west"}],
            },
            "spec.region.regions[east].cluster is 'other'",
        ),
        # West dials east: it needs east's URLs.
        (
            "shop-west",
            {
                **region("west"),
                "regions": [
                    {"name": "east", "cluster": "shop-east"},
                    {"name": "west", "cluster": "shop-west"},
                ],
            },
            "spec.region.regions[east].leafnodeURLs must list",
        ),
    ],
)
def test_a_hand_edited_region_section_is_refused_by_name(
    name: str, section: dict[str, Any], words: str
) -> None:
    body = {"metadata": {"name": name, "namespace": "w"}, "spec": {"shards": 2, "region": section}}
    problems = region_problems(ClusterSpec.from_body(body))
    assert any(words in p for p in problems), problems
    assert region_problems(cluster("west")) == []


def _accepted(tmp_path: Path, text: str) -> None:
    path = tmp_path / "server.conf"
    path.write_text(text)
    result = subprocess.run(
        [binaries.find("nats-server"), "--config", str(path), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr + result.stdout + text


def test_both_platforms_render_the_same_link_for_the_same_layout_and_nats_server_accepts_it(
    tmp_path: Path,
) -> None:
    """The local platform's link blocks for a region (regions.link_blocks) are the operator's, for a
    listener on the same port, the same URLs of the other region and the same password."""
    east, west = cluster("east"), cluster("west")
    assert east.region is not None and west.region is not None
    assert link_blocks(east.region, None, tls=False) == local_regions.link_blocks(
        "east", "0.0.0.0", 7422, {"west": WEST_URLS}, OPEN_LINK.password
    )
    assert link_blocks(west.region, None, tls=False) == local_regions.link_blocks(
        "west", "0.0.0.0", 7422, {"east": EAST_URLS}, OPEN_LINK.password
    )
    placements = plan_journal(ZONES, 3, "Required")
    for spec in (east, west):
        for config in builders.journal_server_configs(spec, placements):
            assert config.jetstream_domain == spec.region.name  # type: ignore[union-attr]
            text = builders.build_journal_config(spec, placements)["data"]["server-0.conf"]
            _accepted(tmp_path, text.replace("/data/jetstream", str(tmp_path / "js")))


def test_nats_server_accepts_a_locked_tls_link_as_the_operator_renders_it(tmp_path: Path) -> None:
    tls = LocalTLS(tmp_path / "tls")
    tls.ensure(["127.0.0.1"])
    for name in ("east", "west"):
        spec = cluster(name, authSecretName=f"shop-{name}-link", tlsSecretName=f"shop-{name}-link-tls")
        secret = builders.build_journal_config(
            spec, plan_journal(ZONES, 3, "Required"), link_auth=local_link_auth()
        )
        text = base64.b64decode(secret["data"]["server-1.conf"]).decode()
        text = (
            text.replace(LINK_TLS.cert_file, str(tls.cert_file))
            .replace(LINK_TLS.key_file, str(tls.key_file))
            .replace(LINK_TLS.ca_file, str(tls.ca_file))
            .replace("/data/jetstream", str(tmp_path / "js"))
        )
        _accepted(tmp_path, text)


def test_a_pattern_the_api_server_lets_through_but_the_engine_refuses_degrades_and_changes_nothing() -> None:
    # The API server's regexes are RE2's, where \s is ASCII only: an ideographic space passes the
    # schema (Python's \s, in admit, would catch it), and the engine refuses it.
    bad = ClusterSpec.from_body(body_of(counters=["hits:\u3000*"]))
    seen = Observed(nodes=nodes(), pods=[], cluster_id=CLUSTER_ID, link_auth=AUTH)
    plan = decisions.decide(bad, seen)
    assert plan.degraded is not None and plan.degraded.reason == "InvalidRegion"
    assert "spec.region.counters: a pattern has no spaces" in plan.degraded.message
    assert not plan.changes and not plan.create
    status = build_status(bad, seen, plan, {}, 2)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidRegion"
    # The same cluster with a good pattern is planned as usual.
    assert decisions.decide(cluster(counters=["hits:*"]), seen).create
