"""spec.restoreFrom: a new MemoryCluster seeded from RDB files or another cluster's snapshots, once."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, journal_up, provision_job, provisioned, spec
from k8s_offline import admit, crd_schema, memorycluster_crd, schema_errors, validate_manifest

from engram.cli.main import build_parser
from engram_operator import builders, labels
from engram_operator.announce import announcements
from engram_operator.builders.provision import (
    RESTORE_ACTIVE_DEADLINE_SECONDS,
    RESTORE_MOUNT,
    SOURCE_JOURNAL_AUTH_DIR,
    SOURCE_JOURNAL_TLS_DIR,
    source_journal_urls,
)
from engram_operator.decisions import Plan, decide
from engram_operator.observe import (
    JobInfo,
    Observed,
    SecretData,
    SourceCluster,
    job_from_api,
    source_from_api,
)
from engram_operator.spec import (
    ClusterSource,
    ClusterSpec,
    IssuerRef,
    RdbSource,
    RestoreSpec,
    TlsSpec,
    restore_problems,
)
from engram_operator.status import build_status

RDB = {"rdb": {"claimName": "backups", "paths": ["dumps/a.rdb", "b.rdb"]}}
FROM_CLUSTER = {"cluster": {"name": "source"}}
# The source as the operator reads it: five journal servers, every shard with a verified snapshot.
SOURCE = SourceCluster(
    "source", found=True, journal_replicas=5, cluster_id="5" * 32, snapshots_since="2026-01-01T00:00:00Z"
)


def body(restore: dict[str, Any] | None = None, name: str = "demo", **spec_: Any) -> dict[str, Any]:
    if restore is not None:
        spec_["restoreFrom"] = restore
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": name, "namespace": "db"},
        "spec": spec_,
    }


def container(job: dict[str, Any]) -> dict[str, Any]:
    [only] = job["spec"]["template"]["spec"]["containers"]
    return only


def created_jobs(plan: Plan) -> list[dict[str, Any]]:
    return [o for o in plan.create if o["kind"] == "Job"]


def ready_to_provision(cluster: ClusterSpec, source: SourceCluster | None = None) -> Observed:
    """The journal is up and no Job exists yet: the moment the provisioning Job is decided."""
    return dataclasses.replace(journal_up(cluster), restore_source=source)


# --- CRD: what the API server admits and refuses -----------------------------------------------------


@pytest.mark.parametrize("restore", [RDB, FROM_CLUSTER], ids=["rdb", "cluster"])
def test_each_source_is_admitted_and_parsed(restore: dict[str, Any]) -> None:
    stored, errors = admit(body(restore))
    assert errors == []
    parsed = ClusterSpec.from_body(stored).restore
    if "rdb" in restore:
        assert parsed == RestoreSpec(rdb=RdbSource("backups", ("dumps/a.rdb", "b.rdb")))
    else:
        assert parsed == RestoreSpec(cluster=ClusterSource("source"))
    assert parsed is not None and parsed.source() == restore


def test_a_cluster_without_restore_from_has_none() -> None:
    stored, errors = admit(body())
    assert errors == [] and "restoreFrom" not in stored["spec"]
    assert ClusterSpec.from_body(stored).restore is None


def test_dots_inside_a_file_name_are_not_a_parent_directory() -> None:
    _, errors = admit(body({"rdb": {"claimName": "backups", "paths": ["a..b.rdb", "..hidden/x.rdb"]}}))
    assert errors == []


ONE_SOURCE = "spec.restoreFrom needs exactly one source: rdb"


@pytest.mark.parametrize(
    ("restore", "field", "words"),
    [
        ({**RDB, **FROM_CLUSTER}, "spec.restoreFrom", ONE_SOURCE),
        ({}, "spec.restoreFrom", ONE_SOURCE),
        ({"rdb": {"claimName": "b", "paths": ["/data/a.rdb"]}}, "spec.restoreFrom.rdb.paths[0]", "relative"),
        ({"rdb": {"claimName": "b", "paths": ["../a.rdb"]}}, "spec.restoreFrom.rdb.paths[0]", "'..'"),
        (
            {"rdb": {"claimName": "b", "paths": ["a.rdb", "x/../../a.rdb"]}},
            "spec.restoreFrom.rdb.paths[1]",
            "'..'",
        ),
        ({"rdb": {"claimName": "b", "paths": ["x/.."]}}, "spec.restoreFrom.rdb.paths[0]", "'..'"),
        ({"rdb": {"claimName": "b", "paths": [""]}}, "spec.restoreFrom.rdb.paths.0", "non-empty"),
        ({"rdb": {"claimName": "b", "paths": []}}, "spec.restoreFrom.rdb.paths", "non-empty"),
        ({"rdb": {"claimName": "b"}}, "spec.restoreFrom.rdb", "'paths' is a required property"),
        ({"rdb": {"paths": ["a.rdb"]}}, "spec.restoreFrom.rdb", "'claimName' is a required property"),
        (
            {"rdb": {"claimName": "Backups!", "paths": ["a"]}},
            "spec.restoreFrom.rdb.claimName",
            "does not match",
        ),
        ({"cluster": {"name": "Source"}}, "spec.restoreFrom.cluster.name", "does not match"),
        ({"cluster": {}}, "spec.restoreFrom.cluster", "'name' is a required property"),
        ({"cluster": {"name": "source", "namespace": "x"}}, "spec.restoreFrom.cluster", "was unexpected"),
        ({"s3": {"bucket": "b"}}, "spec.restoreFrom", "'s3' was unexpected"),
    ],
)
def test_a_bad_restore_from_is_refused_naming_the_field(
    restore: dict[str, Any], field: str, words: str
) -> None:
    _, errors = admit(body(restore))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{field}: ") and words in errors[0], errors


def test_a_cluster_is_not_restored_from_itself() -> None:
    _, errors = admit(body({"cluster": {"name": "demo"}}))
    assert errors == [
        "<root>: spec.restoreFrom.cluster.name cannot name this MemoryCluster itself: a cluster is "
        "restored from another MemoryCluster of the namespace"
    ]


def test_restore_from_cannot_change_after_creation() -> None:
    old, _ = admit(body(FROM_CLUSTER))
    changed = copy.deepcopy(old)
    changed["spec"]["restoreFrom"] = {"cluster": {"name": "another"}}
    _, errors = admit(changed, old=old)
    assert len(errors) == 1 and errors[0].startswith("spec.restoreFrom: spec.restoreFrom cannot be changed")
    # Nor added to a cluster created empty, nor removed: what the cluster was seeded from stays said.
    empty, _ = admit(body())
    for before, after in ((empty, old), (old, empty)):
        _, errors = admit(copy.deepcopy(after), old=before)
        assert (
            len(errors) == 1 and "cannot be added to or removed from an existing MemoryCluster" in errors[0]
        )


def test_other_fields_still_change_on_a_restored_cluster() -> None:
    old, _ = admit(body(RDB))
    new = copy.deepcopy(old)
    new["spec"]["replicasPerShard"] = 2
    new["spec"]["snapshots"]["request"] = "now"
    _, errors = admit(new, old=old)
    assert errors == []


# --- the operator's own check (an object admitted without the CEL rules) ------------------------------


@pytest.mark.parametrize(
    ("restore", "words"),
    [
        ({**RDB, **FROM_CLUSTER}, ONE_SOURCE),
        ({}, ONE_SOURCE),
        ({"rdb": {"claimName": "b", "paths": ["/a.rdb"]}}, "relative to the volume's root"),
        ({"rdb": {"claimName": "b", "paths": ["x/../a.rdb"]}}, "without '..'"),
        ({"rdb": {"claimName": "b", "paths": []}}, "at least one RDB file"),
        ({"rdb": {"claimName": "", "paths": ["a.rdb"]}}, "claimName must name"),
        ({"cluster": {"name": "demo"}}, "cannot be restored from itself"),
    ],
)
def test_the_operator_refuses_what_the_crd_would_with_the_same_words(
    restore: dict[str, Any], words: str
) -> None:
    problems = restore_problems(ClusterSpec.from_body(body(restore)))
    assert len(problems) == 1 and words in problems[0], problems


def test_valid_sources_have_no_problem() -> None:
    for restore in (RDB, FROM_CLUSTER, None):
        assert restore_problems(ClusterSpec.from_body(body(restore))) == []


# --- the provisioning Job -------------------------------------------------------------------------------


def test_an_rdb_restore_mounts_the_claim_read_only_and_passes_each_file() -> None:
    cluster = spec(restoreFrom=RDB)
    job = builders.build_provision_job(cluster, CLUSTER_ID)
    validate_manifest(job)
    pod = job["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "restore")
    assert volume["persistentVolumeClaim"] == {"claimName": "backups", "readOnly": True}
    mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "restore")
    assert mount == {"name": "restore", "mountPath": RESTORE_MOUNT, "readOnly": True}
    command = container(job)["command"]
    assert command[command.index("--timeout") + 2 :] == [
        "--restore-from",
        "/restore/dumps/a.rdb",
        "--restore-from",
        "/restore/b.rdb",
    ]
    assert json.loads(job["metadata"]["annotations"][labels.RESTORE_FROM]) == RDB


def test_a_restore_job_may_use_the_memory_a_scratch_valkey_needs_and_take_hours() -> None:
    job = builders.build_provision_job(spec(restoreFrom=RDB), CLUSTER_ID)
    # No default memory limit: the scratch Valkey holds a file's data (the empty cluster's 256Mi would not).
    assert "limits" not in container(job)["resources"]
    assert job["spec"]["activeDeadlineSeconds"] == RESTORE_ACTIVE_DEADLINE_SECONDS
    sized = {"requests": {"memory": "2Gi"}, "limits": {"memory": "3Gi"}}
    stored, errors = admit(body({**RDB, "resources": sized}))
    assert errors == []
    job = builders.build_provision_job(ClusterSpec.from_body(stored), CLUSTER_ID)
    validate_manifest(job)
    assert container(job)["resources"] == sized


def test_a_cluster_restore_names_the_source_and_its_journal_and_mounts_nothing() -> None:
    cluster = spec(restoreFrom=FROM_CLUSTER)
    urls = source_journal_urls(cluster, "source", 5)
    job = builders.build_provision_job(cluster, CLUSTER_ID, urls, "5" * 32)
    validate_manifest(job)
    command = container(job)["command"]
    assert command[command.index("--timeout") + 2 :] == [
        "--restore-from-cluster",
        "source",
        "--restore-journal",
        ",".join(f"nats://source-journal-{i}-0.source-journal.db.svc.cluster.local:4222" for i in range(5)),
    ]
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["tmp"]
    recorded = json.loads(job["metadata"]["annotations"][labels.RESTORE_FROM])
    assert recorded == {"cluster": {"name": "source", "clusterId": "5" * 32}}


def test_without_restore_from_the_job_seeds_nothing() -> None:
    job = builders.build_provision_job(spec(), CLUSTER_ID)
    assert not any(a.startswith("--restore") for a in container(job)["command"])
    assert labels.RESTORE_FROM not in job["metadata"]["annotations"]
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


# --- decisions --------------------------------------------------------------------------------------------


def test_an_rdb_restore_is_provisioned_as_soon_as_the_journal_is_ready() -> None:
    cluster = spec(restoreFrom=RDB)
    plan = decide(cluster, ready_to_provision(cluster))
    [job] = created_jobs(plan)
    assert "--restore-from" in container(job)["command"]
    [event] = [e for e in plan.events if e.reason == "Provisioning"]
    assert "seeding it from dumps/a.rdb, b.rdb in PersistentVolumeClaim backups" in event.message


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (None, "MemoryCluster source (spec.restoreFrom.cluster) does not exist in namespace db"),
        (SourceCluster("source"), "does not exist in namespace db"),
        (dataclasses.replace(SOURCE, deleting=True), "is being deleted"),
        (dataclasses.replace(SOURCE, snapshots_since=""), "set its spec.snapshots.request to take one now"),
    ],
    ids=["not-read", "missing", "deleting", "no-snapshots"],
)
def test_a_cluster_restore_waits_for_a_source_with_a_snapshot_of_every_shard(
    source: SourceCluster | None, words: str
) -> None:
    cluster = spec(restoreFrom=FROM_CLUSTER)
    plan = decide(cluster, ready_to_provision(cluster, source))
    assert created_jobs(plan) == [] and plan.degraded is None
    assert plan.provisioned is not None
    assert (plan.provisioned.status, plan.provisioned.reason) == ("False", "WaitingForRestoreSource")
    assert words in plan.provisioned.message
    assert any(words in w for w in plan.waiting)


def test_a_cluster_restore_reads_the_sources_journal_size_and_records_its_id() -> None:
    cluster = spec(restoreFrom=FROM_CLUSTER)
    [job] = created_jobs(decide(cluster, ready_to_provision(cluster, SOURCE)))
    command = container(job)["command"]
    urls = command[command.index("--restore-journal") + 1].split(",")
    assert len(urls) == 5 and urls[4].startswith("nats://source-journal-4-0.source-journal.db.")
    assert json.loads(job["metadata"]["annotations"][labels.RESTORE_FROM])["cluster"]["clusterId"] == "5" * 32


def test_an_invalid_restore_is_refused_in_status_and_no_job_is_made() -> None:
    cluster = spec(restoreFrom={"cluster": {"name": "demo"}})
    plan = decide(cluster, ready_to_provision(cluster, SOURCE))
    assert created_jobs(plan) == []
    assert plan.degraded is not None and plan.degraded.reason == "InvalidRestore"
    assert "cannot be restored from itself" in plan.degraded.message
    assert plan.provisioned is not None and plan.provisioned.reason == "InvalidRestore"
    [event] = [e for e in plan.events if e.reason == "InvalidRestore"]
    assert event.type == "Warning" and event.standing


def failed_for_good(cluster: ClusterSpec) -> Observed:
    error = (
        "PodFailurePolicy: exit code 3; engram provision: error: restore failed: dumps/a.rdb is not an RDB"
    )
    job = provision_job(cluster, failed=True, permanent=True, error=error, restore=RDB)
    return dataclasses.replace(journal_up(cluster), provisioning=job)


def test_a_failed_restore_is_shown_with_the_jobs_message_and_not_retried() -> None:
    cluster = spec(restoreFrom=RDB)
    seen = failed_for_good(cluster)
    plan = decide(cluster, seen)
    # The Job and its pods stay, for their logs; nothing new is made and no pod starts.
    assert plan.delete_jobs == [] and plan.create == []
    assert plan.provisioned is not None
    assert (plan.provisioned.status, plan.provisioned.reason) == ("False", "RestoreFailed")
    assert "dumps/a.rdb is not an RDB" in plan.provisioned.message
    assert "kubectl delete job demo-provision" in plan.provisioned.message
    assert plan.degraded is not None and plan.degraded.reason == "RestoreFailed"
    [event] = [e for e in plan.events if e.reason == "RestoreFailed"]
    assert event.type == "Warning" and "not an RDB" in event.message
    # Posted once: the next reconcile sees the same failure and says nothing new.
    first, posted = announcements(plan, [], None, frozenset())
    assert event in first
    again, _ = announcements(decide(cluster, seen), [], None, posted)
    assert [e for e in again if e.reason == "RestoreFailed"] == []


def test_a_restore_that_failed_only_for_now_is_retried_with_a_new_job() -> None:
    cluster = spec(restoreFrom=RDB)
    job = provision_job(cluster, failed=True, error="DeadlineExceeded: journal away", restore=RDB)
    plan = decide(cluster, dataclasses.replace(journal_up(cluster), provisioning=job))
    assert plan.delete_jobs == ["demo-provision"]
    assert plan.provisioned is not None and plan.provisioned.reason == "ProvisioningFailed"


def test_a_permanent_failure_without_a_restore_is_kept_too() -> None:
    cluster = spec()
    job = provision_job(cluster, failed=True, permanent=True, error="demo is held by cluster id ffff")
    plan = decide(cluster, dataclasses.replace(journal_up(cluster), provisioning=job))
    assert plan.delete_jobs == [] and plan.create == []
    assert plan.provisioned is not None and plan.provisioned.reason == "ProvisioningFailed"
    assert "retrying cannot help: demo is held by cluster id ffff" in plan.provisioned.message


def test_a_restored_cluster_records_its_source_in_status_and_keeps_it() -> None:
    cluster = spec(restoreFrom=RDB)
    seen = dataclasses.replace(
        provisioned(cluster), provisioning=provision_job(cluster, succeeded=True, restore=RDB)
    )
    plan = decide(cluster, seen)
    assert plan.provisioned is not None
    assert (plan.provisioned.status, plan.provisioned.reason) == ("True", "Restored")
    assert "seeded it from dumps/a.rdb, b.rdb in PersistentVolumeClaim backups" in plan.provisioned.message
    status = build_status(cluster, seen, plan, None, generation=1)
    assert status["restoredFrom"] == RDB
    assert schema_errors(crd_schema(memorycluster_crd())["properties"]["status"], status) == []
    # The Job deleted later (its record gone with it): the status keeps what was restored.
    later = dataclasses.replace(seen, provisioning=None)
    assert build_status(cluster, later, decide(cluster, later), status, generation=2)["restoredFrom"] == RDB


def test_a_cluster_created_empty_has_no_restored_from() -> None:
    cluster = spec()
    seen = provisioned(cluster)
    plan = decide(cluster, seen)
    assert plan.provisioned is not None and plan.provisioned.reason == "Provisioned"
    assert "restoredFrom" not in build_status(cluster, seen, plan, None, generation=1)


# --- reading the Job and the source -------------------------------------------------------------------


def api_job(cluster: ClusterSpec, conditions: list[dict[str, Any]]) -> dict[str, Any]:
    job = builders.build_provision_job(cluster, CLUSTER_ID)
    job["metadata"]["uid"] = "job-1"
    job["status"] = {"failed": 1, "conditions": conditions}
    return job


def attempt(code: int, message: str) -> dict[str, Any]:
    ended = {"exitCode": code, "finishedAt": "2026-01-01T00:00:00Z", "message": message}
    return {
        "metadata": {"ownerReferences": [{"uid": "job-1"}]},
        "status": {"containerStatuses": [{"state": {"terminated": ended}}]},
    }


def test_a_job_failed_by_its_pod_failure_policy_is_permanent_and_says_why() -> None:
    cluster = spec(restoreFrom=RDB)
    gave_up = {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 3"}
    said = "engram provision: error: restore failed: /restore/b.rdb: not an RDB file\n"
    info = job_from_api(api_job(cluster, [gave_up]), [attempt(3, said)])
    assert info.failed and info.permanent
    assert info.error == f"PodFailurePolicy: exit code 3; {said.strip()}"
    assert info.restore == RDB


def test_a_job_that_ran_out_of_time_or_attempts_is_not_permanent() -> None:
    cluster = spec()
    for reason in ("DeadlineExceeded", "BackoffLimitExceeded"):
        gave_up = {"type": "Failed", "status": "True", "reason": reason}
        info = job_from_api(api_job(cluster, [gave_up]), [attempt(1, "journal not available")])
        assert info.failed and not info.permanent and info.restore == {}
    # Exit 3 seen on a pod counts even where the API server has no podFailurePolicy.
    gave_up = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    assert job_from_api(api_job(cluster, [gave_up]), [attempt(3, "held by cluster id ffff")]).permanent


def test_the_source_cluster_is_read_from_its_object() -> None:
    obj = {
        "metadata": {"name": "source"},
        "spec": {"journal": {"replicas": 5}},
        "status": {"clusterId": "5" * 32, "snapshots": {"allShardsSince": "2026-01-01T00:00:00Z"}},
    }
    assert source_from_api("source", obj) == SOURCE
    assert source_from_api("source", None) == SourceCluster("source")
    fresh = source_from_api("source", {"metadata": {"name": "source"}, "spec": {}})
    assert fresh.found and fresh.journal_replicas == 3 and fresh.snapshots_since == ""


def test_a_job_made_before_restores_existed_reads_as_seeding_nothing() -> None:
    info = JobInfo(name="demo-provision", cluster_id=CLUSTER_ID)
    assert not info.permanent and info.restore == {}


@pytest.mark.parametrize("restore", [RDB, FROM_CLUSTER], ids=["rdb", "cluster"])
def test_the_jobs_command_is_one_engram_provision_accepts(restore: dict[str, Any]) -> None:
    """The operator and the engine agree on the flags: the engine's own parser reads the Job's command."""
    cluster = spec(restoreFrom=restore)
    urls = source_journal_urls(cluster, "source", 3)
    command = container(builders.build_provision_job(cluster, CLUSTER_ID, urls))["command"]
    assert command[0] == "engram"
    args = build_parser().parse_args(command[1:])
    if "rdb" in restore:
        assert args.restore_from == ["/restore/dumps/a.rdb", "/restore/b.rdb"]
    else:
        assert (args.restore_from_cluster, args.restore_journal) == ("source", ",".join(urls))


# --- a locked source (its spec.tls): read with its own CA and password --------------------------------------

SOURCE_CERTS = "source-certs"
# The source's Secrets as the operator reads them: keys only, no values.
LOCKED_SECRETS = {
    SOURCE_CERTS: SecretData(
        SOURCE_CERTS, found=True, data=dict.fromkeys(["tls.crt", "tls.key", "ca.crt"], b"")
    ),
    "source-journal-auth": SecretData(
        "source-journal-auth", found=True, data=dict.fromkeys(["password", "route-password"], b"")
    ),
}
LOCKED_SOURCE = dataclasses.replace(SOURCE, tls=TlsSpec(secret_name=SOURCE_CERTS), secrets=LOCKED_SECRETS)
SOURCE_FLAGS = [
    "--restore-journal-user",
    "engram",
    "--restore-journal-password-file",
    f"{SOURCE_JOURNAL_AUTH_DIR}/password",
    "--restore-journal-ca",
    f"{SOURCE_JOURNAL_TLS_DIR}/ca.crt",
]


def pod_volumes(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}


def mounts(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container(job)["volumeMounts"]}


@pytest.mark.parametrize("own_tls", [None, {"secretName": "demo-certs"}], ids=["open-copy", "locked-copy"])
def test_a_locked_source_is_read_with_its_own_ca_and_password_mounted_read_only(
    own_tls: dict[str, Any] | None,
) -> None:
    extra = {"tls": own_tls} if own_tls else {}
    cluster = spec(restoreFrom=FROM_CLUSTER, **extra)
    [job] = created_jobs(decide(cluster, ready_to_provision(cluster, LOCKED_SOURCE)))
    validate_manifest(job)
    volumes = pod_volumes(job)
    # By reference to the source's own Secrets, one key each: not its servers' key, not the routes' password.
    assert volumes["source-journal-ca"]["secret"] == {
        "secretName": SOURCE_CERTS,
        "defaultMode": 0o440,
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert volumes["source-journal-auth"]["secret"]["secretName"] == "source-journal-auth"
    assert volumes["source-journal-auth"]["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert mounts(job)["source-journal-ca"] == {
        "name": "source-journal-ca",
        "mountPath": SOURCE_JOURNAL_TLS_DIR,
        "readOnly": True,
    }
    assert mounts(job)["source-journal-auth"]["readOnly"] is True
    command = container(job)["command"]
    assert command[-len(SOURCE_FLAGS) :] == SOURCE_FLAGS
    args = build_parser().parse_args(command[1:])
    # The new cluster's own journal keeps its own credentials (a locked copy) or none (an open one).
    if own_tls:
        assert (args.journal_user, args.journal_ca) == ("engram", "/etc/engram-journal-tls/ca.crt")
        assert {"journal-ca", "journal-auth"} <= set(volumes)
        assert volumes["journal-auth"]["secret"]["secretName"] == "demo-journal-auth"
    else:
        assert (args.journal_user, args.journal_ca) == ("", "")
        assert "journal-auth" not in volumes
    assert "env" not in container(job)  # nothing of the source's travels as a value


def test_a_source_issued_by_cert_manager_lends_the_ca_of_its_journal_certificate() -> None:
    issued = TlsSpec(issuer=IssuerRef("ca"))
    secrets = {
        "source-journal-tls": SecretData("source-journal-tls", found=True, data={"ca.crt": b""}),
        "source-journal-auth": LOCKED_SECRETS["source-journal-auth"],
    }
    cluster = spec(restoreFrom=FROM_CLUSTER)
    source = dataclasses.replace(SOURCE, tls=issued, secrets=secrets)
    [job] = created_jobs(decide(cluster, ready_to_provision(cluster, source)))
    assert pod_volumes(job)["source-journal-ca"]["secret"]["secretName"] == "source-journal-tls"


def test_an_open_source_is_read_without_credentials_even_by_a_locked_copy() -> None:
    cluster = spec(restoreFrom=FROM_CLUSTER, tls={"secretName": "demo-certs"})
    [job] = created_jobs(decide(cluster, ready_to_provision(cluster, SOURCE)))
    validate_manifest(job)
    assert not any(name.startswith("source-") for name in pod_volumes(job))
    assert not any(a.startswith("--restore-journal-") for a in container(job)["command"])


@pytest.mark.parametrize(
    ("secrets", "words"),
    [
        ({SOURCE_CERTS: LOCKED_SECRETS[SOURCE_CERTS]}, "Secret source-journal-auth does not exist"),
        (
            {**LOCKED_SECRETS, "source-journal-auth": SecretData("source-journal-auth", found=True)},
            "Secret source-journal-auth lacks key password",
        ),
        (
            {**LOCKED_SECRETS, SOURCE_CERTS: SecretData(SOURCE_CERTS, found=True, data={"tls.crt": b""})},
            "Secret source-certs lacks key ca.crt",
        ),
        (
            {**LOCKED_SECRETS, SOURCE_CERTS: SecretData(SOURCE_CERTS, error="403 Forbidden")},
            "Secret source-certs cannot be read (403 Forbidden)",
        ),
    ],
    ids=["auth-missing", "no-password-key", "no-ca-key", "forbidden"],
)
def test_a_locked_source_without_its_secrets_starts_nothing_and_says_which(
    secrets: dict[str, SecretData], words: str
) -> None:
    cluster = spec(restoreFrom=FROM_CLUSTER)
    source = dataclasses.replace(LOCKED_SOURCE, secrets=secrets)
    plan = decide(cluster, ready_to_provision(cluster, source))
    assert created_jobs(plan) == [] and plan.degraded is None
    assert plan.provisioned is not None
    assert (plan.provisioned.status, plan.provisioned.reason) == ("False", "RestoreSourceSecretMissing")
    assert words in plan.provisioned.message
    assert "MemoryCluster source (spec.restoreFrom.cluster) has a locked journal" in plan.provisioned.message
    [event] = [e for e in plan.events if e.reason == "RestoreSourceSecretMissing"]
    assert event.type == "Warning" and event.standing and words in event.message


def test_the_source_clusters_tls_is_read_from_its_object() -> None:
    obj = {"metadata": {"name": "source"}, "spec": {"tls": {"secretName": SOURCE_CERTS}}}
    assert source_from_api("source", obj).tls == TlsSpec(secret_name=SOURCE_CERTS)
    assert source_from_api("source", {"metadata": {"name": "source"}, "spec": {}}).tls is None
