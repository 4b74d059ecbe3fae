"""The MultiRegionCluster spec and CRD: what is admitted, and every refusal naming its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from k8s_offline import (
    CRD_DIR,
    admit,
    crd_schema,
    load_yaml_documents,
    memorycluster_crd,
    multiregioncluster_crd,
)

from engram_operator.multiregion_spec import Layout, MultiRegionSpec, layout_problems, merged, spec_problems


def mrc(regions: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MultiRegionCluster",
        "metadata": {"name": "shop", "namespace": "shop", "uid": "mrc-uid"},
        "spec": {
            "regions": regions
            if regions is not None
            else [
                {"name": "east", "namespace": "shop-east"},
                {"name": "west", "namespace": "shop-west"},
            ],
            "template": {"shards": 2},
            "link": {"secretName": "shop-link"},
            **spec,
        },
    }
    return body


def parsed(body: dict[str, Any]) -> MultiRegionSpec:
    stored, _ = admit(body)
    return MultiRegionSpec.from_body(stored)


def test_two_local_regions_in_two_namespaces_are_admitted_with_their_defaults() -> None:
    stored, errors = admit(mrc())
    assert errors == []
    spec = MultiRegionSpec.from_body(stored)
    assert spec_problems(spec) == []
    east, west = spec.regions
    assert (
        east.local is not None
        and east.local.memory_cluster == "shop-east"
        and east.local.namespace == "shop-east"
    )
    assert west.cluster == "shop-west"
    # The template is a MemoryCluster spec, defaulted as one.
    assert spec.template["replicasPerShard"] == 1 and spec.shards == 2 and spec.journal_replicas == 3


def test_the_template_is_the_memorycluster_spec_schema_without_the_region_section() -> None:
    template = crd_schema(multiregioncluster_crd())["properties"]["spec"]["properties"]["template"]
    spec = copy.deepcopy(crd_schema(memorycluster_crd())["properties"]["spec"])
    del spec["properties"]["region"]
    assert template["properties"] == spec["properties"]


def test_crd_has_status_subresource_printer_columns_and_short_name() -> None:
    crd = multiregioncluster_crd()
    assert crd["spec"]["names"]["shortNames"] == ["mrc"] and crd["spec"]["names"]["categories"] == ["engram"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Regions",
        "Ready",
        "Max Lag",
        "Linked",
        "Age",
    ]


def test_examples_include_two_namespaces_and_a_remote_region() -> None:
    docs = [
        d for p in sorted((CRD_DIR / "examples").glob("multiregion*.yaml")) for d in load_yaml_documents(p)
    ]
    specs = [parsed(d) for d in docs]
    assert len(specs) == 2 and all(spec_problems(s) == [] for s in specs)
    assert any(r.remote is not None for s in specs for r in s.regions)
    assert any(len({r.local.namespace for r in s.local_regions if r.local}) == 2 for s in specs)
    assert any(s.counters == ("hits:*",) for s in specs)
    assert any(s.ttls == ("session:*",) for s in specs)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (mrc([{"name": "east"}]), "spec.regions"),
        (mrc([{"name": "East"}, {"name": "west"}]), "spec.regions.0.name"),
        (
            mrc(
                [
                    {"name": "east"},
                    {"name": "far", "namespace": "x", "remote": {"clusterName": "far", "shards": 2}},
                ]
            ),
            "local (namespace, memoryCluster, overrides, leafnodeService) or remote, not both",
        ),
        (
            mrc([{"name": "east"}, {"name": "far", "remote": {"clusterName": "far", "shards": 3}}]),
            "must equal spec.template.shards",
        ),
        (
            mrc(template={"shards": 2, "restoreFrom": {"cluster": {"name": "old"}}}),
            "spec.template.restoreFrom",
        ),
        (
            mrc(
                [
                    {"name": "a", "remote": {"clusterName": "a", "shards": 2}},
                    {"name": "b", "remote": {"clusterName": "b", "shards": 2}},
                ]
            ),
            "at least one local region",
        ),
    ],
)
def test_the_crd_refuses_bad_specs_by_field(body: dict[str, Any], words: str) -> None:
    _, errors = admit(body)
    assert any(words in e for e in errors), errors


BAD_PATTERNS = [
    ([""], "should be non-empty", "a pattern has 1 to 200 characters, got ''"),
    (["hits *"], "does not match", "a pattern has no spaces or control characters, got 'hits *'"),
    (["hits:\x07*"], "does not match", "no spaces or control characters, got 'hits:\\x07*'"),
    (["x" * 201], "is too long", "a pattern has 1 to 200 characters"),
    ([f"k{i}:*" for i in range(65)], "is too long", "at most 64 patterns, got 65"),
    (["hits:*", "hits:*"], "Duplicate value", "a pattern is given twice"),
]


@pytest.mark.parametrize("field", ["counters", "ttls"])
@pytest.mark.parametrize(("patterns", "schema_words", "words"), BAD_PATTERNS)
def test_bad_key_patterns_are_refused_by_the_crd_and_the_operator(
    field: str, patterns: list[str], schema_words: str, words: str
) -> None:
    _, errors = admit(mrc(**{field: patterns}))
    assert any(e.startswith(f"spec.{field}") and schema_words in e for e in errors), errors
    problems = _problems(mrc(**{field: patterns}))
    assert any(p.startswith(f"spec.{field}: ") and words in p for p in problems), problems


def test_counters_and_ttls_are_checked_apart() -> None:
    """Each list has its own limit of 64 (the module keeps one per kind), and one pattern may be in
    both: a counter key may carry a converging TTL."""
    many = [f"k{i}:*" for i in range(64)]
    body = mrc(counters=many, ttls=[*many[:1], "session:*"])
    assert admit(body)[1] == [] and _problems(body) == []
    stored, _ = admit(mrc(ttls=many))
    assert parsed(stored).ttls == tuple(many) and parsed(stored).counters == ()


def test_counters_are_admitted_and_may_change_on_a_running_cluster() -> None:
    """Unlike the regions, spec.counters only decides how later increments replicate."""
    old, errors = admit(mrc(counters=["hits:*"]))
    assert errors == [] and parsed(old).counters == ("hits:*",) and spec_problems(parsed(old)) == []
    assert parsed(mrc()).counters == ()
    for counters in (["hits:*", "views:[0-9]*"], []):
        assert admit(mrc(counters=counters), old=old)[1] == []
    new, _ = admit(mrc())
    assert admit(new, old=old)[1] == []
    running = Layout.of(parsed(old))
    assert layout_problems(parsed(mrc(counters=["views:*"])), running) == []


def test_ttls_are_admitted_and_may_change_on_a_running_cluster() -> None:
    """Like spec.counters, spec.ttls only decides how later writes replicate, not where regions run."""
    old, errors = admit(mrc(ttls=["session:*"]))
    assert errors == [] and parsed(old).ttls == ("session:*",) and spec_problems(parsed(old)) == []
    assert parsed(mrc()).ttls == ()
    for ttls in (["session:*", "cache:[0-9]*"], []):
        assert admit(mrc(ttls=ttls), old=old)[1] == []
    new, _ = admit(mrc())
    assert admit(new, old=old)[1] == []
    running = Layout.of(parsed(old))
    assert layout_problems(parsed(mrc(ttls=["cache:*"])), running) == []


def test_the_crd_refuses_changing_the_regions_of_a_running_cluster() -> None:
    new = mrc([{"name": "east", "namespace": "shop-east"}, {"name": "north"}])
    _, errors = admit(new, old=mrc())
    assert any("changing the regions of a running multi-region cluster" in e for e in errors), errors


def _problems(body: dict[str, Any]) -> list[str]:
    return spec_problems(MultiRegionSpec.from_body(body))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (mrc([{"name": "east"}]), "spec.regions needs at least two regions to link, got 1"),
        (
            mrc([{"name": n} for n in ("east", "west", "north", "south", "up", "down")]),
            "spec.regions: 6 regions: at most 5 can be linked",
        ),
        (mrc([{"name": "east"}, {"name": "east", "namespace": "x"}]), "spec.regions names a region twice"),
        (mrc([{"name": "e_1"}, {"name": "west"}]), "spec.regions[e_1].name: region name 'e_1'"),
        (
            mrc([{"name": "east", "memoryCluster": "db"}, {"name": "west", "memoryCluster": "db"}]),
            "spec.regions: two regions run the same MemoryCluster shop/db",
        ),
        (
            mrc([{"name": "east", "memoryCluster": "Bad"}, {"name": "west"}]),
            "spec.regions[east].memoryCluster",
        ),
        (
            mrc([{"name": "east", "overrides": {"shards": 3}}, {"name": "west"}]),
            "spec.regions[east].overrides may set only placement, resources, journal, not shards",
        ),
        (
            mrc([{"name": "east", "overrides": {"journal": {"replicas": 5}}}, {"name": "west"}]),
            "spec.regions[east].overrides.journal.replicas",
        ),
        (
            mrc([{"name": "east", "leafnodeService": {"type": "External"}}, {"name": "west"}]),
            "spec.regions[east].leafnodeService.type",
        ),
        (
            mrc(
                [
                    {"name": "east"},
                    {"name": "far", "namespace": "x", "remote": {"clusterName": "far", "shards": 2}},
                ]
            ),
            "spec.regions[far]: a region is local",
        ),
        (
            mrc([{"name": "east"}, {"name": "far", "remote": {"clusterName": "", "shards": 2}}]),
            "spec.regions[far].remote.clusterName",
        ),
        (
            mrc([{"name": "east"}, {"name": "far", "remote": {"clusterName": "far", "shards": 3}}]),
            "spec.regions[far].remote.shards is 3 but spec.template.shards is 2: every region must have "
            "the same shard count",
        ),
        # Every region dials every other: a remote one must say where it listens.
        (
            mrc([{"name": "west"}, {"name": "far", "remote": {"clusterName": "far", "shards": 2}}]),
            "spec.regions[far].remote.leafnodeURLs must list where region far's journal listens",
        ),
        (
            mrc(
                [
                    {"name": "a", "remote": {"clusterName": "a", "shards": 2}},
                    {"name": "b", "remote": {"clusterName": "b", "shards": 2}},
                ]
            ),
            "at least one local region",
        ),
        (mrc(link={}), "spec.link.secretName"),
        (
            mrc(template={"shards": 2, "restoreFrom": {"cluster": {"name": "old"}}}),
            "spec.template.restoreFrom",
        ),
        (mrc(template={"shards": 2, "region": {"name": "x"}}), "spec.template.region is written by"),
    ],
)
def test_the_operator_refuses_each_bad_spec_naming_the_field(body: dict[str, Any], words: str) -> None:
    problems = _problems(body)
    assert any(words in p for p in problems), problems


def test_a_remote_region_with_its_urls_is_admitted() -> None:
    far = {"name": "far", "remote": {"clusterName": "far", "shards": 2,
                                     "leafnodeURLs": ["nats-leaf://far.example:7422"]}}
    assert _problems(mrc([{"name": "east"}, far])) == []


def test_the_region_count_is_not_hard_wired_here_only_links_of_limits_it() -> None:
    """Three regions link; six are refused with link.py's own words, not a count of this module's."""
    assert _problems(mrc([{"name": "east"}, {"name": "west"}, {"name": "north"}])) == []
    problems = _problems(mrc([{"name": n} for n in ("east", "west", "north", "south", "up", "down")]))
    assert problems == ["spec.regions: 6 regions: at most 5 can be linked"]


def test_a_changed_region_set_or_shard_count_of_a_running_cluster_is_refused() -> None:
    running = Layout.of(MultiRegionSpec.from_body(mrc()))
    moved = MultiRegionSpec.from_body(mrc([{"name": "east", "namespace": "shop-east"}, {"name": "west"}]))
    assert "not supported in this version" in layout_problems(moved, running)[0]
    resharded = MultiRegionSpec.from_body(mrc(template={"shards": 3}))
    assert layout_problems(resharded, running)[0].startswith(
        "spec.template.shards: resharding a multi-region"
    )
    assert (
        layout_problems(MultiRegionSpec.from_body(mrc()), Layout.from_status({"layout": running.to_status()}))
        == []
    )


def test_overrides_merge_maps_and_replace_lists() -> None:
    template = {"placement": {"spreading": "Required", "tolerations": [{"key": "a"}]}, "shards": 2}
    out = merged(template, {"placement": {"tolerations": [{"key": "b"}], "nodeSelector": {"pool": "w"}}})
    assert out == {
        "placement": {"spreading": "Required", "tolerations": [{"key": "b"}], "nodeSelector": {"pool": "w"}},
        "shards": 2,
    }
    assert template["placement"]["tolerations"] == [{"key": "a"}]
