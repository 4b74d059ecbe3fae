"""spec.users on kind: a user whose password is in a Secret, and a password changed in place.

The tests run in file order and share one single-node cluster. A changed Secret reaches the pods
through the operator (its next reconcile, every 5 s) and the kubelet (its next sync of the Secret
volume, about a minute), then the node reads the file again: no pod restarts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import k8s_api
import pytest
from k8s_api import Kubectl, eventually, eventually_equal

NAME = "users"
SECRET = "users-passwords"
ENGINE = f"engram.io/cluster={NAME},app.kubernetes.io/component=engine"
# Operator resync + kubelet Secret volume sync (its period plus cache TTL) + the node's poll.
PROPAGATION_TIMEOUT = 240


def memorycluster() -> dict[str, Any]:
    return k8s_api.memorycluster(NAME, 1, 0, users=[
        {"name": "default", "rules": "off"},
        {"name": "app", "rules": "~* +@all", "passwordSecret": {"name": SECRET, "key": "app"}},
    ])


def password_secret(password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "stringData": {"app": password},
    }


def condition(kube: Kubectl, ctype: str) -> dict[str, Any]:
    conditions = (kube.get("memorycluster", NAME).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == ctype), {})


def auth(kube: Kubectl, client_pod: str, user: str, password: str) -> dict[str, Any]:
    host = f"{NAME}.{kube.namespace}.svc.cluster.local"
    return json.loads(kube.exec(client_pod, "python", "/tmp/auth.py", host, user, password))


def restarts(kube: Kubectl) -> dict[str, int]:
    """Each engine pod (by uid) and how often its containers restarted."""
    out = {}
    for pod in kube.pods(ENGINE):
        containers = pod["status"].get("containerStatuses") or []
        out[pod["metadata"]["uid"]] = sum(c.get("restartCount", 0) for c in containers)
    return out


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    """The cluster and its Secret go when the file ends, pass or fail."""
    yield
    kube.run("delete", "memorycluster", NAME, "--ignore-not-found", "--wait=false", check=False)
    kube.run("delete", "secret", SECRET, "--ignore-not-found", check=False)


def test_a_user_with_a_password_from_a_secret_can_auth_and_nobody_else(
    kube: Kubectl, client_pod: str
) -> None:
    kube.apply(password_secret("first-password"))
    kube.apply(memorycluster())
    eventually_equal(kube, "Ready", lambda: condition(kube, "Ready").get("status"), "True", timeout=600)
    assert condition(kube, "UsersReady").get("status") == "True"
    assert auth(kube, client_pod, "app", "first-password") == {"ok": True}
    # WRONGPASS and NOAUTH both reach redis-py as AuthenticationError.
    refused = auth(kube, client_pod, "app", "wrong-password")
    assert refused["ok"] is False and refused["error"].startswith("AuthenticationError"), refused
    # The default user is declared off: a client that does not AUTH is refused.
    anonymous = auth(kube, client_pod, "", "")
    assert anonymous["ok"] is False and "authentication required" in anonymous["error"].lower(), anonymous
    # The users file holds the password's hash, never the password.
    users_file = base64.b64decode(
        kube.run("get", "secret", f"{NAME}-users", "-o", "jsonpath={.data.users\\.acl}")
    ).decode()
    assert "user app on #" in users_file and "first-password" not in users_file


def test_a_password_changed_in_its_secret_works_without_restarting_a_pod(
    kube: Kubectl, client_pod: str
) -> None:
    pods = restarts(kube)
    kube.apply(password_secret("second-password"))
    eventually(
        kube,
        "AUTH with the new password",
        lambda: auth(kube, client_pod, "app", "second-password"),
        lambda answer: answer.get("ok") is True,
        timeout=PROPAGATION_TIMEOUT,
        interval=5,
    )
    assert auth(kube, client_pod, "app", "first-password")["ok"] is False
    # The same pods, and no container of theirs restarted meanwhile.
    assert restarts(kube) == pods


def test_a_missing_password_secret_keeps_the_users_working_and_says_so(
    kube: Kubectl, client_pod: str
) -> None:
    kube.run("delete", "secret", SECRET)
    missing = eventually(
        kube,
        "UsersReady False naming the Secret",
        lambda: condition(kube, "UsersReady"),
        lambda c: c.get("reason") == "PasswordSecretMissing",
        timeout=60,
    )
    assert missing["status"] == "False" and SECRET in missing["message"], missing
    # The users file as last written stays: the user still logs in.
    assert auth(kube, client_pod, "app", "second-password") == {"ok": True}
