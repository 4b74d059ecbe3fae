"""spec.users on Kubernetes: the CRD's checks, the users file and its Secret, the pods that mount it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, journal_up, provisioned, running, spec
from k8s_offline import admit, validate_manifest

from engram.cluster.users import parse_users
from engram.node.config import NodeConfig
from engram_operator import builders, constants, labels
from engram_operator.announce import announcements
from engram_operator.builders.engine import POD_IDENTITY_FIELDS, shared_node_config
from engram_operator.builders.users import build_users_secret, render_users_file, user_line
from engram_operator.decisions import Plan, decide
from engram_operator.observe import Observed, SecretData, secret_from_api
from engram_operator.spec import ClusterSpec, SecretKeyRef, UserSpec, users_problems
from engram_operator.status import build_status

APP = {
    "name": "app",
    "rules": "~app:* +@read +@write",
    "passwordSecret": {"name": "app-pw", "key": "password"},
}
DEFAULT_OFF = {"name": "default", "rules": "off"}
OPS = {"name": "ops", "rules": "~* &* +@all", "passwordSecret": {"name": "ops-pw", "key": "pw"}}


def body(users: list[dict[str, Any]] | None = None, name: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": name, "namespace": "db"},
        "spec": {"users": users} if users is not None else {},
    }


def secrets(**values: dict[str, bytes]) -> dict[str, SecretData]:
    """Password Secrets as read: name -> {key: value}."""
    return {name: SecretData(name, found=True, data=data) for name, data in values.items()}


PASSWORDS = secrets(**{"app-pw": {"password": b"app-secret"}, "ops-pw": {"pw": b"ops-secret"}})


def sha(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def stored(secret: dict[str, Any]) -> SecretData:
    """A users Secret the plan wrote, as the next reconcile reads it back."""
    return secret_from_api(secret["metadata"]["name"], secret)


def users_file(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"][constants.USERS_FILE]).decode()


def condition(plan: Plan) -> tuple[str, str, str]:
    assert plan.users is not None
    return plan.users.status, plan.users.reason, plan.users.message


# --- the CRD: what the API server admits and refuses ------------------------------------------------------


def test_users_with_secrets_and_a_default_user_off_are_admitted_and_reach_the_spec() -> None:
    admitted, errors = admit(body([APP, DEFAULT_OFF]))
    assert errors == []
    cluster = ClusterSpec.from_body(admitted)
    assert cluster.users == (
        UserSpec("app", "~app:* +@read +@write", SecretKeyRef("app-pw", "password")),
        UserSpec("default", "off"),
    )
    assert users_problems(cluster) == []


def test_a_cluster_without_users_declares_none() -> None:
    admitted, errors = admit(body())
    assert errors == [] and "users" not in admitted["spec"]
    assert ClusterSpec.from_body(admitted).users == ()


# (users, what the API server says, what the operator says: the same words, one naming the user)
REFUSED = [
    (
        [{"name": "app user", "rules": "on"}],
        "spec.users[0].name: spec.users[].name must be a non-empty user name without spaces",
        "spec.users[app user].name must be a non-empty user name without spaces",
    ),
    (
        [{"name": "", "rules": "on"}],
        "spec.users[0].name: spec.users[].name must be a non-empty user name without spaces",
        "spec.users[0].name must be a non-empty user name without spaces",
    ),
    *(
        (
            [{"name": "app", "rules": f"on {word} ~*"}],
            "spec.users[0].rules: spec.users[].rules must not carry passwords (rules starting with '>', "
            "'<', '#' or '!'): a user's password comes from its passwordSecret",
            "spec.users[app].rules must not carry passwords (rules starting with '>', '<', '#' or '!'): "
            "a user's password comes from its passwordSecret",
        )
        for word in (">clear", "<clear", "#" + sha(b"x"), "!" + sha(b"x"))
    ),
    (
        [{"name": "app", "rules": "on ~*\nuser root on nopass +@all"}],
        "spec.users[0].rules: spec.users[].rules must be one line",
        "spec.users[app].rules must be one line",
    ),
    *(
        (
            [{**APP, "rules": f"~* {word} +@all"}],
            "spec.users[0]: spec.users[].rules must not say nopass, resetpass or reset when passwordSecret "
            "is set: they would drop the password the Secret gives",
            "spec.users[app].rules must not say nopass, resetpass or reset when passwordSecret is set: "
            "they would drop the password the Secret gives",
        )
        for word in ("nopass", "ResetPass", "reset")
    ),
    (
        [{**APP, "passwordSecret": {"name": "demo-users", "key": "password"}}],
        "<root>: spec.users[].passwordSecret.name cannot be the MemoryCluster's name followed by -users: "
        "the operator writes the users file into that Secret",
        "spec.users[app].passwordSecret.name cannot be demo-users: the operator writes the users file "
        "into that Secret",
    ),
    (
        [APP, {**APP, "rules": "+@read"}],
        'spec.users[1]: Duplicate value: {"name": "app"}',
        "spec.users: user app is listed twice; a user is declared once",
    ),
]


@pytest.mark.parametrize(("users", "crd_says", "operator_says"), REFUSED)
def test_a_bad_user_is_refused_by_the_crd_and_by_the_operator_with_the_same_words(
    users: list[dict[str, Any]], crd_says: str, operator_says: str
) -> None:
    _, errors = admit(body(users))
    assert errors == [crd_says]
    # An object admitted without the CEL rules (an older API server) meets the operator's check.
    assert users_problems(ClusterSpec.from_body(body(users))) == [operator_says]


def test_rules_may_hold_hashes_and_bangs_inside_a_word_and_nopass_without_a_secret() -> None:
    """Only a word that starts with a password marker is one: key patterns may contain them."""
    users = [{"name": "cache", "rules": "on nopass ~cache#* ~a!b +@all"}, DEFAULT_OFF]
    _, errors = admit(body(users))
    assert errors == []
    assert users_problems(ClusterSpec.from_body(body(users))) == []


def test_a_password_secret_needs_a_name_and_a_key() -> None:
    _, errors = admit(body([{**APP, "passwordSecret": {"name": "app-pw"}}]))
    assert errors == ["spec.users.0.passwordSecret: 'key' is a required property"]
    cluster = ClusterSpec.from_body(body([{**APP, "passwordSecret": {"name": "app-pw"}}]))
    assert users_problems(cluster) == [
        "spec.users[app].passwordSecret needs the name of a Secret and the key holding the password"
    ]


# --- the users file and its Secret ------------------------------------------------------------------------


def test_the_users_file_holds_each_password_as_its_sha256_never_in_clear() -> None:
    cluster = spec(users=[APP, DEFAULT_OFF])
    text = render_users_file("demo", cluster.users, {"app": b"app-secret"})
    assert "app-secret" not in text
    assert f"user app on #{sha(b'app-secret')} ~app:* +@read +@write\n" in text
    # The node's own parser reads it back as these users and rules.
    assert parse_users(text, "users.acl") == {
        "app": f"on #{sha(b'app-secret')} ~app:* +@read +@write",
        "default": "off",
    }


def test_the_users_file_is_sorted_by_name_whatever_the_spec_order() -> None:
    one = render_users_file("demo", spec(users=[OPS, DEFAULT_OFF, APP]).users, {"app": b"a", "ops": b"o"})
    two = render_users_file("demo", spec(users=[APP, OPS, DEFAULT_OFF]).users, {"ops": b"o", "app": b"a"})
    assert one == two
    names = [line.split()[1] for line in one.splitlines() if line.startswith("user ")]
    assert names == ["app", "default", "ops"]


def test_a_default_user_declared_off_is_written_off_and_a_user_with_a_password_is_switched_on_first() -> None:
    assert user_line(UserSpec("default", "off"), None) == "user default off"
    # "off" in a password user's own rules comes after the operator's "on", so it still disables it.
    assert user_line(UserSpec("app", "off ~*"), b"pw") == f"user app on #{sha(b'pw')} off ~*"
    assert user_line(UserSpec("bare"), None) == "user bare"


def test_no_users_give_a_file_declaring_none() -> None:
    text = render_users_file("demo", (), {})
    assert text.startswith("#") and parse_users(text, "users.acl") == {}


def test_the_users_secret_is_adopted_labelled_and_valid() -> None:
    cluster = spec(users=[APP])
    secret = build_users_secret(cluster, "user app on\n")
    validate_manifest(secret)
    meta = secret["metadata"]
    assert meta["name"] == "demo-users" and meta["namespace"] == "db"
    [owner] = meta["ownerReferences"]
    assert owner["uid"] == "uid-1" and owner["controller"] is True and owner["blockOwnerDeletion"] is True
    assert meta["labels"][labels.CLUSTER] == "demo" and meta["labels"][labels.MANAGED_BY] == "engram-operator"
    assert secret["type"] == "Opaque" and users_file(secret) == "user app on\n"


# --- engine pods: the mount and the node config -----------------------------------------------------------


def test_engine_pods_mount_the_users_secret_read_only_in_the_node_container_and_name_it() -> None:
    pod = builders.build_engine_pod(
        spec(users=[APP]), name="demo-0-0", shard=0, index=0, zone="zone-a", cluster_id=CLUSTER_ID
    )
    validate_manifest(pod)
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "users"]
    # A whole-Secret volume (no subPath): the kubelet refreshes it in place when the Secret changes.
    assert volume == {"name": "users", "secret": {"secretName": "demo-users", "defaultMode": 0o440}}
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    [mount] = [m for m in containers["node"]["volumeMounts"] if m["name"] == "users"]
    assert mount == {"name": "users", "mountPath": constants.USERS_DIR, "readOnly": True}
    assert "subPath" not in mount
    assert all(m["name"] != "users" for m in containers["valkey"]["volumeMounts"])
    config = NodeConfig(**json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG]))
    assert config.users_file == f"{constants.USERS_DIR}/{constants.USERS_FILE}"
    assert config.users_file == "/etc/engram-users/users.acl"


def test_the_users_file_path_is_shared_node_config_and_pod_identity_stays_out() -> None:
    shared = shared_node_config(spec(users=[APP]))
    assert shared["users_file"] == "/etc/engram-users/users.acl"
    assert shared.keys().isdisjoint(POD_IDENTITY_FIELDS)


def test_neither_users_nor_passwords_roll_the_pods() -> None:
    """The kubelet refreshes the mounted file and the node re-reads it: no restart is needed."""
    base = spec()
    with_users = spec(users=[APP, DEFAULT_OFF])
    assert builders.pod_spec_hash(with_users) == builders.pod_spec_hash(base)
    seen = up(with_users)
    assert seen.pods
    changed = seen_with(seen, secrets(**{"app-pw": {"password": b"rotated"}}))
    plan = decide(with_users, changed)
    assert plan.users_secret is not None and sha(b"rotated") in users_file(plan.users_secret)
    # The same pods, on the same hash: nothing deleted, created or switched over.
    assert not plan.changes and not plan.rolling
    assert {p.spec_hash for p in seen.pods} == {builders.pod_spec_hash(with_users)}


# --- deciding: writing the file, keeping it when a password is missing -------------------------------------


def up(cluster: ClusterSpec) -> Observed:
    """The cluster running, its users file written from PASSWORDS (users never change its pods)."""
    seen = seen_with(running(dataclasses.replace(cluster, users=())), PASSWORDS)
    return dataclasses.replace(seen, users_secret=stored(decide(cluster, seen).users_secret))


def seen_with(seen: Observed, passwords: dict[str, SecretData], users_secret: Any = ...) -> Observed:
    changes: dict[str, Any] = {"password_secrets": passwords}
    if users_secret is not ...:
        changes["users_secret"] = users_secret
    return dataclasses.replace(seen, **changes)


def test_a_new_cluster_writes_its_users_file_before_its_pods_start() -> None:
    cluster = spec(users=[APP, DEFAULT_OFF])
    plan = decide(cluster, seen_with(provisioned(cluster), PASSWORDS))
    assert plan.users_secret is not None
    validate_manifest(plan.users_secret)
    assert parse_users(users_file(plan.users_secret), "users.acl") == {
        "app": f"on #{sha(b'app-secret')} ~app:* +@read +@write",
        "default": "off",
    }
    assert [o["kind"] for o in plan.create].count("Pod") == 2
    status, reason, message = condition(plan)
    assert (status, reason) == ("True", "UsersFileCurrent")
    assert "Secret demo-users declares 2 user(s): app, default" in message


def test_a_cluster_without_users_gets_an_empty_users_file_all_the_same() -> None:
    cluster = spec()
    plan = decide(cluster, provisioned(cluster))
    assert plan.users_secret is not None and parse_users(users_file(plan.users_secret), "f") == {}
    assert condition(plan)[:2] == ("True", "UsersFileCurrent")


def test_an_unchanged_users_file_is_not_written_again() -> None:
    cluster = spec(users=[APP])
    seen = seen_with(provisioned(cluster), PASSWORDS)
    first = decide(cluster, seen)
    plan = decide(cluster, dataclasses.replace(seen, users_secret=stored(first.users_secret)))
    assert plan.users_secret is None
    assert [e for e in plan.events if e.reason == "UsersUpdated"] == []


def test_a_changed_password_rewrites_the_file_and_says_which_user_changed() -> None:
    cluster = spec(users=[APP, OPS])
    rotated = secrets(**{"app-pw": {"password": b"new"}, "ops-pw": {"pw": b"ops-secret"}})
    plan = decide(cluster, seen_with(up(cluster), rotated))
    assert plan.users_secret is not None
    text = users_file(plan.users_secret)
    assert f"#{sha(b'new')}" in text and f"#{sha(b'app-secret')}" not in text
    [event] = [e for e in plan.events if e.reason == "UsersUpdated"]
    assert event.type == "Normal" and "changed: app;" in event.message and "new" not in event.message


@pytest.mark.parametrize(
    ("passwords", "says"),
    [
        (
            secrets(**{"ops-pw": {"pw": b"o"}}),
            "spec.users[app].passwordSecret: Secret app-pw not found in namespace db",
        ),
        (
            secrets(**{"app-pw": {"other": b"x"}, "ops-pw": {"pw": b"o"}}),
            "spec.users[app].passwordSecret: Secret app-pw has no key password",
        ),
        (
            secrets(**{"app-pw": {"password": b""}, "ops-pw": {"pw": b"o"}}),
            "spec.users[app].passwordSecret: key password of Secret app-pw is empty",
        ),
        (
            {"app-pw": SecretData("app-pw", error="403 Forbidden"), **secrets(**{"ops-pw": {"pw": b"o"}})},
            "spec.users[app].passwordSecret: Secret app-pw cannot be read (403 Forbidden)",
        ),
    ],
)
def test_a_missing_password_keeps_the_users_file_as_last_written(
    passwords: dict[str, SecretData], says: str
) -> None:
    """Writing the file without the user would delete it on every node and lock its clients out."""
    cluster = spec(users=[APP, OPS])
    seen = up(cluster)
    plan = decide(cluster, seen_with(seen, passwords))
    assert plan.users_secret is None
    status, reason, message = condition(plan)
    assert (status, reason) == ("False", "PasswordSecretMissing")
    assert message.startswith(says) and "the users file as last written stays in Secret demo-users" in message
    [warning] = [e for e in plan.events if e.reason == "PasswordSecretMissing"]
    assert warning.type == "Warning" and warning.standing and warning.message == message
    # The cluster keeps serving: no pod is touched, and nothing waits on the users.
    assert seen.pods and not plan.changes and not any(w.startswith("users") for w in plan.waiting)


def test_a_missing_password_is_warned_about_once_while_it_lasts() -> None:
    cluster = spec(users=[APP])
    seen = seen_with(up(cluster), {})
    plan = decide(cluster, seen)
    first, posted = announcements(plan, [], None, frozenset())
    assert [e.reason for e in first] == ["PasswordSecretMissing"]
    again, _ = announcements(decide(cluster, seen), [], None, posted)
    assert again == []


def test_a_new_cluster_with_a_missing_password_starts_no_pod_until_the_file_is_complete() -> None:
    """A file without the user would be worse than none: a default user with a password would be open."""
    cluster = spec(users=[{**APP, "name": "default", "rules": "~* +@all"}])
    plan = decide(cluster, provisioned(cluster))
    assert plan.users_secret is None
    assert [o for o in plan.create if o["kind"] == "Pod"] == []
    assert condition(plan)[1] == "PasswordSecretMissing"
    assert "new engine pods wait for a first complete users file" in condition(plan)[2]
    missing = "spec.users[default].passwordSecret: Secret app-pw not found in namespace db"
    assert f"users: {missing}" in plan.waiting
    # Once the Secret exists, the file and the pods come in one reconcile (the file is written first).
    plan = decide(cluster, seen_with(provisioned(cluster), PASSWORDS))
    assert plan.users_secret is not None and [o["kind"] for o in plan.create].count("Pod") == 2


def test_a_secret_of_that_name_made_by_someone_else_is_left_alone() -> None:
    cluster = spec(users=[APP])
    theirs = SecretData("demo-users", found=True, data={"users.acl": b"user x on nopass\n"}, owner_uid="")
    plan = decide(cluster, seen_with(journal_up(cluster), PASSWORDS, theirs))
    assert plan.users_secret is None
    assert condition(plan)[:2] == ("False", "UsersSecretConflict")
    assert "Secret demo-users exists and is not this MemoryCluster's" in condition(plan)[2]


def test_users_admitted_without_the_crd_rules_are_never_written() -> None:
    admitted_elsewhere = body([{**APP, "rules": "on >clear ~*"}])
    admitted_elsewhere["metadata"]["uid"] = "uid-1"
    cluster = ClusterSpec.from_body(admitted_elsewhere)
    plan = decide(cluster, seen_with(up(spec()), PASSWORDS))
    assert plan.users_secret is None
    status, reason, message = condition(plan)
    assert (status, reason) == ("False", "InvalidUsers") and "must not carry passwords" in message


def test_users_ready_is_in_the_status_from_the_first_reconcile() -> None:
    cluster = spec(users=[APP])
    seen = seen_with(journal_up(cluster), {})
    plan = decide(cluster, seen)
    status = build_status(cluster, seen, plan, None, 1)
    [users] = [c for c in status["conditions"] if c["type"] == "UsersReady"]
    assert users["status"] == "False" and users["reason"] == "PasswordSecretMissing"

