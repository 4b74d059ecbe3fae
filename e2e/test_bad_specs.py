"""Bad specs on kind: the API server refuses what the CRD's schema and CEL rules forbid, naming the
field, and a spec the nodes' zones cannot satisfy leaves the cluster as it was, Degraded, saying why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import k8s_api
import pytest
from k8s_api import Kubectl, condition, eventually, wait_ready

NAME = "badspec"
REPLICAS = 1
ENGINE = k8s_api.engine_selector(NAME)


def refusal(kube: Kubectl, manifest: dict[str, Any]) -> str:
    """What the API server said when it refused ``manifest`` (fails if it was accepted)."""
    name = manifest["metadata"]["name"]
    answer = kube.attempt("apply", "-f", "-", stdin=json.dumps(manifest))
    accepted = answer.returncode == 0
    if accepted and name != NAME:
        k8s_api.delete_memorycluster(kube, name)
    assert not accepted, f"the API server accepted {name}: {answer.stdout}"
    return answer.stderr


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    yield
    k8s_api.delete_memorycluster(kube, NAME)


@pytest.mark.parametrize(
    ("field", "spec", "said"),
    [
        ("spec.shards", {"shards": 0}, "spec.shards"),
        ("spec.replicasPerShard", {"replicasPerShard": 6}, "spec.replicasPerShard"),
        ("spec.engine.logLevel", {"engine": {"logLevel": "loud"}}, "spec.engine.logLevel"),
        ("spec.engine.version", {"engine": {"version": "latest"}}, "spec.engine.version"),
        (
            "spec.restoreFrom",
            {"restoreFrom": {"cluster": {"name": "a"}, "rdb": {"claimName": "b", "paths": ["dump.rdb"]}}},
            "spec.restoreFrom needs exactly one source",
        ),
        (
            "spec.users[].rules",
            {"users": [{"name": "app", "rules": "on >secret ~* +@all"}]},
            "spec.users[].rules must not carry passwords",
        ),
    ],
)
def test_the_api_server_refuses_a_bad_field_and_names_it(
    kube: Kubectl, field: str, spec: dict[str, Any], said: str
) -> None:
    name = "bad-" + field.removeprefix("spec.").replace(".", "-").replace("[]", "").lower()
    said_back = refusal(kube, k8s_api.memorycluster(name, 1, 1, **spec))
    assert said in said_back, said_back
    assert not kube.exists("memorycluster", name)


def test_the_api_server_refuses_a_name_too_long_for_the_pods_names(kube: Kubectl) -> None:
    said = refusal(kube, k8s_api.memorycluster("a" * 41, 1, 1))
    assert "metadata.name must be at most 40 characters" in said, said


def test_fields_fixed_at_creation_cannot_be_changed_on_a_running_cluster(kube: Kubectl) -> None:
    kube.apply(k8s_api.memorycluster(NAME, 1, REPLICAS, placement={"spreading": "Required"}))
    wait_ready(kube, NAME, REPLICAS + 1)
    changed = k8s_api.memorycluster(NAME, 1, REPLICAS, placement={"spreading": "Required"})
    changed["spec"]["journal"]["replicas"] = 5
    said = refusal(kube, changed)
    assert "spec.journal.replicas cannot be changed on a running cluster" in said, said
    assert kube.get("memorycluster", NAME)["spec"]["journal"]["replicas"] == 3


def test_an_impossible_spec_is_degraded_and_changes_nothing(kube: Kubectl) -> None:
    """Three replicas need four zones with spreading Required; kind has three."""
    before = sorted(p["metadata"]["uid"] for p in kube.pods(ENGINE))
    kube.run("patch", "memorycluster", NAME, "--type=merge", "-p", '{"spec":{"replicasPerShard":3}}')
    degraded = eventually(
        kube,
        "Degraded condition True",
        lambda: condition(kube, NAME, "Degraded"),
        lambda c: c.get("status") == "True",
        timeout=60,
    )
    assert degraded["reason"] == "UnsatisfiableSpread" and "zone" in degraded["message"].lower(), degraded
    warnings = [e for e in k8s_api.cluster_events(kube, NAME) if e["reason"] == "UnsatisfiableSpread"]
    assert warnings and warnings[0]["type"] == "Warning", warnings
    assert sorted(p["metadata"]["uid"] for p in kube.pods(ENGINE)) == before


def test_a_satisfiable_spec_again_clears_degraded(kube: Kubectl) -> None:
    patch = {"spec": {"replicasPerShard": REPLICAS}}
    kube.run("patch", "memorycluster", NAME, "--type=merge", "-p", json.dumps(patch))
    eventually(
        kube,
        "Degraded condition False",
        lambda: condition(kube, NAME, "Degraded"),
        lambda c: c.get("status") == "False",
        timeout=60,
    )
    assert condition(kube, NAME, "Degraded")["reason"] == "AsSpecified"
    assert kube.count_pods_with_label(ENGINE) == REPLICAS + 1
