"""The MemoryCluster CRD: a valid structural schema, examples admitted, bad specs refused by name."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from k8s_offline import (
    CRD_DIR,
    admit,
    core_structural_schema,
    crd_schema,
    load_yaml_documents,
    memorycluster_crd,
    validate_manifest,
)

from engram_operator.spec import ClusterSpec

EXAMPLES = sorted((CRD_DIR / "examples").glob("*.yaml"))


def cluster(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": "demo"},
        "spec": spec,
    }


def test_crd_is_a_valid_customresourcedefinition() -> None:
    for path in CRD_DIR.glob("*.yaml"):
        for doc in load_yaml_documents(path):
            validate_manifest(doc)


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural_every_node_typed_and_no_refs() -> None:
    for path, node in _walk(crd_schema(memorycluster_crd())):
        assert "$ref" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"


def test_status_is_a_subresource_and_printer_columns_cover_the_issue() -> None:
    version = memorycluster_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Shards", "Replicas", "Ready", "Status", "Phase", "Primary Zones", "Snapshots", "Age"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_admitted(path: Any) -> None:
    for doc in load_yaml_documents(path):
        _, errors = admit(doc)
        assert errors == []


def test_crd_defaults_equal_the_operator_defaults() -> None:
    """An empty spec as stored (CRD defaults) means the same cluster as the operator's own defaults."""
    stored, errors = admit(cluster())
    assert errors == []
    assert stored["spec"]["shards"] == 1
    assert stored["spec"]["journal"]["storage"]["size"] == "10Gi"
    assert ClusterSpec.from_body(stored) == ClusterSpec.from_body(cluster())


@pytest.mark.parametrize(("field", "core_type"), [("tolerations", "Toleration"), ("affinity", "Affinity")])
def test_scheduling_fields_embed_the_core_schemas(field: str, core_type: str) -> None:
    """What a pod accepts is what the spec accepts: a typo is refused at apply, not at pod creation."""
    placement = crd_schema(memorycluster_crd())["properties"]["spec"]["properties"]["placement"]
    schema = placement["properties"][field]
    schema = schema["items"] if field == "tolerations" else schema
    assert {k: v for k, v in schema.items() if k != "description"} == core_structural_schema(core_type)


def test_node_selector_tolerations_and_affinity_are_admitted_and_reach_the_spec() -> None:
    placement = {
        "nodeSelector": {"pool": "databases"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}}}
                ]
            }
        },
    }
    stored, errors = admit(cluster(placement=placement, engine={"logLevel": "debug"}))
    assert errors == []
    parsed = ClusterSpec.from_body(stored)
    assert parsed.placement.node_selector == {"pool": "databases"}
    assert parsed.placement.tolerations == placement["tolerations"]
    assert parsed.placement.affinity == placement["affinity"]
    assert parsed.engine.log_level == "debug"


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"shards": 0}, "spec.shards", "minimum of 1"),
        ({"shards": 501}, "spec.shards", "maximum of 500"),
        ({"replicasPerShard": 6}, "spec.replicasPerShard", "maximum of 5"),
        ({"replicasPerShard": -1}, "spec.replicasPerShard", "minimum of 0"),
        ({"journal": {"replicas": 4}}, "spec.journal.replicas", "is not one of [3, 5]"),
        ({"placement": {"spreading": "Sometimes"}}, "spec.placement.spreading", "is not one of"),
        ({"engine": {"version": "latest"}}, "spec.engine.version", "does not match"),
        ({"journal": {"storage": {"size": "lots"}}}, "spec.journal.storage.size", "does not match"),
        ({"shard": 3}, "spec", "'shard' was unexpected"),
        (
            {"placement": {"tolerations": [{"keys": "x"}]}},
            "spec.placement.tolerations.0",
            "'keys' was unexpected",
        ),
        ({"placement": {"nodeSelector": {"pool": 3}}}, "spec.placement.nodeSelector.pool", "is not of type"),
        ({"engine": {"logLevel": "loud"}}, "spec.engine.logLevel", "is not one of"),
        ({"journal": {"syncInterval": "sometimes"}}, "spec.journal.syncInterval", "does not match"),
    ],
)
def test_out_of_schema_spec_is_refused_naming_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    _, errors = admit(cluster(**spec))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{field}: ") and words in errors[0]


def test_too_long_name_is_refused_by_cel_with_the_reason() -> None:
    body = cluster()
    body["metadata"]["name"] = "a" * 41
    _, errors = admit(body)
    assert errors == [
        "<root>: metadata.name must be at most 40 characters: pod, Service and journal names are "
        "built from it and must stay within 63"
    ]


def test_name_must_be_a_dns_label_starting_with_a_letter() -> None:
    body = cluster()
    body["metadata"]["name"] = "1demo"
    _, errors = admit(body)
    assert len(errors) == 1 and "must start with a letter" in errors[0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"journal": {"replicas": 5}}, "spec.journal.replicas"),
        ({"journal": {"storage": {"size": "20Gi"}}}, "spec.journal.storage"),
        ({"placement": {"topologyKey": "kubernetes.io/hostname"}}, "spec.placement.topologyKey"),
        ({"journal": {"image": "nats:2.15.0-alpine"}}, "spec.journal.image"),
        ({"journal": {"syncInterval": "1s"}}, "spec.journal.syncInterval"),
    ],
)
def test_unsupported_changes_are_refused_on_update(change: dict[str, Any], field: str) -> None:
    old, _ = admit(cluster(shards=1, journal={"image": "nats:2.14.0-alpine"}))
    new = copy.deepcopy(old)
    for key, value in change.items():
        new["spec"][key] = {**new["spec"][key], **value} if isinstance(value, dict) else value
    _, errors = admit(new, old=old)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{field}: {field} cannot be changed")


def test_supported_changes_pass_on_update() -> None:
    old, _ = admit(cluster(shards=3, replicasPerShard=1))
    new = copy.deepcopy(old)
    new["spec"]["replicasPerShard"] = 2
    new["spec"]["engine"]["version"] = "0.2.0"
    new["spec"]["placement"]["spreading"] = "Required"
    new["spec"]["placement"]["nodeSelector"] = {"pool": "databases"}
    new["spec"]["engine"]["logLevel"] = "debug"
    _, errors = admit(new, old=old)
    assert errors == []


@pytest.mark.parametrize("shards", [1, 2, 5, 500])
def test_shards_can_grow_and_shrink_on_a_running_cluster(shards: int) -> None:
    """Online resharding: the operator runs a reshard Job; only the bounds are checked."""
    old, _ = admit(cluster(shards=3))
    new = copy.deepcopy(old)
    new["spec"]["shards"] = shards
    _, errors = admit(new, old=old)
    assert errors == []
    new["spec"]["shards"] = 501
    _, errors = admit(new, old=old)
    assert errors and "spec.shards" in errors[0]
