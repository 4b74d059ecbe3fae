"""spec.tls on kind: clients reach Valkey over TLS only, and the journal refuses who lacks its password.

cert-manager is not part of the e2e setup, so the test makes its own CA and one certificate with
openssl and gives it as spec.tls.secretName (it covers the journal's names too, so it serves both).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import k8s_api
import pytest
from k8s_api import Kubectl, eventually, eventually_equal

NAME = "tls"
SECRET = "tls-certs"
# An open cluster restored from the locked one: its Job reads NAME's journal with NAME's credentials.
COPY = "tls-copy"
ENGINE = f"engram.io/cluster={NAME},app.kubernetes.io/component=engine"


def make_certificates(directory: Path, namespace: str) -> dict[str, str]:
    """A CA and a certificate for the cluster's client and journal names: tls.crt, tls.key, ca.crt."""
    domain = f"{namespace}.svc.cluster.local"
    names = [NAME, f"{NAME}.{namespace}", f"{NAME}.{namespace}.svc", f"{NAME}.{domain}",
             f"*.{NAME}-nodes.{domain}", f"*.{NAME}-journal.{domain}", f"{NAME}-journal.{domain}"]
    (directory / "ext.cnf").write_text(
        "subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
        "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=e2e-ca")
    openssl("req", *curve, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={NAME}")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tls.crt", "-days", "2", "-extfile", "ext.cnf")
    return {k: (directory / k).read_text() for k in ("tls.crt", "tls.key", "ca.crt")}


def memorycluster() -> dict[str, Any]:
    return k8s_api.memorycluster(NAME, 2, 1, tls={"secretName": SECRET})


def condition(kube: Kubectl, ctype: str, name: str = NAME) -> dict[str, Any]:
    conditions = (kube.get("memorycluster", name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == ctype), {})


@pytest.fixture(scope="module")
def certificates(kube: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: it makes the test's certificates")
    files = make_certificates(tmp_path_factory.mktemp("tls"), kube.namespace)
    kube.apply({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in files.items()},
    })
    yield files
    for name in (COPY, NAME):
        kube.run("delete", "memorycluster", name, "--ignore-not-found", "--wait=false", check=False)
    kube.run("delete", "secret", SECRET, "--ignore-not-found", check=False)


def test_clients_reach_the_cluster_over_tls_and_not_in_plain_text(
    kube: Kubectl, client_pod: str, certificates: dict[str, str]
) -> None:
    kube.apply(memorycluster())
    eventually_equal(kube, "Ready", lambda: condition(kube, "Ready").get("status"), "True", timeout=900)
    kube.exec(client_pod, "sh", "-c", "cat > /tmp/ca.crt", stdin=certificates["ca.crt"])
    host = f"{NAME}.{kube.namespace}.svc.cluster.local"
    answer = json.loads(kube.exec(client_pod, "python", "/tmp/tls.py", host, "/tmp/ca.crt"))
    assert answer["tls"] == {"ok": True}, answer
    assert answer["plain"]["ok"] is False, answer


def test_the_journal_refuses_clients_without_the_clusters_password(kube: Kubectl, client_pod: str) -> None:
    pod = kube.pods(ENGINE)[0]["metadata"]["name"]
    script = (Path(__file__).parent / "clients" / "journal_open.py").read_text()
    kube.run("exec", "-i", pod, "-c", "node", "--", "sh", "-c", "cat > /tmp/journal_open.py", stdin=script)
    url = f"nats://{NAME}-journal-0-0.{NAME}-journal.{kube.namespace}.svc.cluster.local:4222"
    out = kube.run("exec", pod, "-c", "node", "--", "python", "/tmp/journal_open.py", url,
                   "/etc/engram-journal-tls/ca.crt")
    answer = json.loads(out)
    # Over TLS with the right CA but no password: NATS refuses ("Authorization Violation").
    anonymous = answer["anonymous"]
    assert anonymous["ok"] is False and "authorization" in anonymous["error"].lower(), answer
    # Without TLS: refused before any credential is looked at.
    assert answer["plain"]["ok"] is False, answer
    # The credentials the operator generated stay where it put them, and the nodes use them.
    assert kube.exists("secret", f"{NAME}-journal-auth")
    assert condition(kube, "Ready").get("status") == "True"


READ_BACK = """
import sys
from redis.cluster import RedisCluster
client = RedisCluster(host=sys.argv[1], port=6379, socket_timeout=5)
print(sum(client.get(f"tls:{i}") == str(i).encode() for i in range(20)))
"""


def test_an_open_cluster_restores_the_locked_ones_snapshots_with_its_credentials(
    kube: Kubectl, client_pod: str
) -> None:
    request = "e2e-tls-restore"
    kube.run("patch", "memorycluster", NAME, "--type=merge", "-p",
             json.dumps({"spec": {"snapshots": {"request": request}}}))
    eventually(
        kube,
        "a verified snapshot of every shard of the locked cluster",
        lambda: (kube.get("memorycluster", NAME).get("status") or {}).get("snapshots") or {},
        lambda s: s.get("lastRequest") == request and bool(s.get("allShardsSince")),
        timeout=600,
    )
    kube.apply(k8s_api.memorycluster(COPY, 1, 0, restoreFrom={"cluster": {"name": NAME}}))
    eventually_equal(kube, "the copy Ready", lambda: condition(kube, "Ready", COPY).get("status"), "True",
                     timeout=600)
    assert condition(kube, "Provisioned", COPY)["reason"] == "Restored"
    pod = kube.get("job", f"{COPY}-provision")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"source-journal-ca": SECRET, "source-journal-auth": f"{NAME}-journal-auth"}
    # The keys the TLS test wrote, read in plain text from the open copy.
    host = f"{COPY}.{kube.namespace}.svc.cluster.local"
    assert kube.exec(client_pod, "python", "-c", READ_BACK, host).strip() == "20"


READ_BACK_TLS = """
import sys
from redis.cluster import RedisCluster
client = RedisCluster(host=sys.argv[1], port=6379, ssl=True, ssl_ca_certs=sys.argv[2], socket_timeout=5)
print(sum(client.get(f"tls:{i}") == str(i).encode() for i in range(20)))
"""


def test_the_locked_cluster_reshards_online_over_tls_and_keeps_every_key(
    kube: Kubectl, client_pod: str
) -> None:
    """The reshard Job reaches the nodes over TLS with the clients' CA, and Valkey's MIGRATE reaches
    the other pods over TLS too (tls-cluster)."""
    # The copy has served its test: its pods make room for the new shard's.
    kube.run("delete", "memorycluster", COPY, "--ignore-not-found", "--wait=false", check=False)
    kube.run("patch", "memorycluster", NAME, "--type=merge", "-p", json.dumps({"spec": {"shards": 3}}))
    done = eventually(
        kube,
        "status.resharding phase done for 3 shards",
        lambda: (kube.get("memorycluster", NAME).get("status") or {}).get("resharding") or {},
        lambda r: r.get("toShards") == 3 and r.get("phase") in ("done", "failed"),
        timeout=900,
        interval=5,
    )
    assert done["phase"] == "done", (done, condition(kube, "Resharding"))
    assert done["slotsMoved"] > 0, done
    eventually_equal(
        kube,
        "the Resharding condition",
        lambda: (condition(kube, "Resharding").get("status"), condition(kube, "Resharding").get("reason")),
        ("False", "Done"),
        timeout=120,
    )
    # The keys the first test wrote, read over TLS from wherever they moved.
    host = f"{NAME}.{kube.namespace}.svc.cluster.local"
    assert kube.exec(client_pod, "python", "-c", READ_BACK_TLS, host, "/tmp/ca.crt").strip() == "20"
