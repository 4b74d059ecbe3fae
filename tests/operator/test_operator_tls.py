"""spec.tls: Valkey's TLS on the client port, cert-manager Certificates, and a journal locked with TLS
and the operator's generated passwords."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import ssl
import subprocess
from typing import Any

import jsonschema
import pytest
from cluster_state import CLUSTER_ID, NOW, children_of, just_applied, spec
from k8s_offline import admit, validate_manifest

from engram.journal.security import JournalSecurity
from engram.node.config import NodeConfig
from engram_operator import builders, constants, labels
from engram_operator.builders.engine import valkey_args
from engram_operator.builders.journal import plan_journal
from engram_operator.builders.journal_auth import (
    PASSWORD_KEY,
    ROUTE_PASSWORD_KEY,
    build_journal_auth_secret,
    generate_password,
    journal_auth_of,
)
from engram_operator.builders.provision import provision_command
from engram_operator.builders.tls import build_certificates, client_dns_names, journal_dns_names
from engram_operator.decisions import decide
from engram_operator.observe import Observed, SecretData, secret_from_api
from engram_operator.spec import tls_problems

ISSUER = {"issuerRef": {"name": "internal-ca", "kind": "ClusterIssuer"}}
SECRET = {"secretName": "demo-certs"}
ZONES = ["zone-a", "zone-b", "zone-c"]


def body(tls: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": "demo", "namespace": "db"},
        "spec": {"tls": tls} if tls is not None else {},
    }


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def volume(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod_spec["volumes"] if v["name"] == name)


def engine_pod(**overrides: Any) -> dict[str, Any]:
    return builders.build_engine_pod(
        spec(**overrides), name="demo-0-0", shard=0, index=0, zone="zone-a", cluster_id=CLUSTER_ID
    )


def auth_secret() -> SecretData:
    """NAME-journal-auth as the operator made it, read back."""
    cluster = spec(tls=ISSUER)
    obj = build_journal_auth_secret(cluster, "p" * 43, "r" * 43)
    obj["metadata"]["ownerReferences"][0]["uid"] = cluster.uid
    return secret_from_api(obj["metadata"]["name"], obj)


# --- the CRD ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [SECRET, ISSUER, {**SECRET, "journalSecretName": "demo-journal-certs"}])
def test_tls_from_a_secret_or_an_issuer_is_admitted(tls: dict[str, Any]) -> None:
    stored, errors = admit(body(tls))
    assert errors == []
    assert tls_problems(spec(**stored["spec"])) == []


def test_an_issuer_defaults_to_cert_managers_group() -> None:
    stored, _ = admit(body({"issuerRef": {"name": "ca"}}))
    assert stored["spec"]["tls"]["issuerRef"] == {"name": "ca", "kind": "Issuer", "group": "cert-manager.io"}


@pytest.mark.parametrize("tls", [{}, {**SECRET, **ISSUER}])
def test_tls_needs_exactly_one_source_in_the_crd_and_the_operator(tls: dict[str, Any]) -> None:
    _, errors = admit(body(tls))
    assert any("exactly one source of certificates" in e for e in errors)
    assert "exactly one source of certificates" in tls_problems(spec(tls=tls))[0]


def test_an_issuer_kind_other_than_issuer_or_clusterissuer_is_refused() -> None:
    _, errors = admit(body({"issuerRef": {"name": "ca", "kind": "Vault"}}))
    assert errors


@pytest.mark.parametrize(
    ("old", "new"),
    [(None, SECRET), (SECRET, None), (SECRET, {"secretName": "other"}), (SECRET, ISSUER)],
)
def test_tls_is_fixed_at_creation(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    _, errors = admit(body(new), old=body(old))
    assert any("spec.tls cannot be" in e for e in errors), errors


def test_an_unchanged_tls_is_admitted_on_update() -> None:
    assert admit(body(SECRET), old=body(SECRET))[1] == []


# --- Valkey ---------------------------------------------------------------------------------------------


def test_valkey_serves_tls_only_on_the_client_port() -> None:
    args = valkey_args(spec(tls=SECRET))
    flag = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert flag["--port"] == "0"
    assert flag["--tls-port"] == str(constants.CLIENT_PORT)
    assert flag["--tls-cert-file"] == f"{constants.TLS_DIR}/tls.crt"
    assert flag["--tls-key-file"] == f"{constants.TLS_DIR}/tls.key"
    assert flag["--tls-ca-cert-file"] == f"{constants.TLS_DIR}/ca.crt"
    # MIGRATE between pods (online resharding) dials with TLS and is not asked for a certificate.
    assert flag["--tls-cluster"] == "yes"
    assert flag["--tls-auth-clients"] == "no"
    # The node still reaches Valkey on its socket.
    assert flag["--unixsocket"] == constants.VALKEY_SOCKET


def test_without_tls_valkey_is_plain_text() -> None:
    args = valkey_args(spec())
    assert args[args.index("--port") + 1] == str(constants.CLIENT_PORT)
    assert not [a for a in args if a.startswith("--tls")]


def test_the_valkey_container_mounts_the_client_certificate_and_the_pod_is_valid() -> None:
    pod = engine_pod(tls=SECRET)
    validate_manifest(pod)
    valkey = container(pod, "valkey")
    assert {"name": "tls", "mountPath": constants.TLS_DIR, "readOnly": True} in valkey["volumeMounts"]
    tls = volume(pod["spec"], "tls")["secret"]
    assert tls == {"secretName": "demo-certs", "defaultMode": 0o440}
    # The node serves the same certificate on its control and metrics ports, and watches it.
    assert {"name": "tls", "mountPath": constants.TLS_DIR, "readOnly": True} in container(pod, "node")[
        "volumeMounts"
    ]


def test_no_probe_or_hook_uses_the_client_port() -> None:
    """TLS on the client port must leave every probe working: they use the socket or the control port."""
    pod = engine_pod(tls=ISSUER)
    for c in pod["spec"]["containers"]:
        for key in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(key)
            if probe is None:
                continue
            assert probe.get("tcpSocket", {}).get("port") != constants.CLIENT_PORT
            command = probe.get("exec", {}).get("command", [])
            assert str(constants.CLIENT_PORT) not in command
    hook = " ".join(container(pod, "valkey")["lifecycle"]["preStop"]["exec"]["command"])
    assert f"-p {constants.ADMIN_PORT}" in hook


def test_turning_tls_on_changes_the_pod_spec_hash() -> None:
    assert builders.pod_spec_hash(spec(tls=SECRET)) != builders.pod_spec_hash(spec())


def test_an_issuer_clusters_pods_mount_the_certificate_its_certificate_writes() -> None:
    pod = engine_pod(tls=ISSUER)
    assert volume(pod["spec"], "tls")["secret"]["secretName"] == labels.tls_secret_name("demo")


# --- cert-manager Certificates ----------------------------------------------------------------------

# The part of cert-manager.io/v1 Certificate the operator writes (cert-manager's own CRD schema,
# trimmed to these fields; the CRD is not installed here, so its shape is checked against this).
USAGES = ["digital signature", "key encipherment", "server auth", "client auth"]
CERTIFICATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": {"type": "object", "required": ["name", "namespace", "ownerReferences", "labels"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "secretTemplate": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
                "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "issuerRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "group": {"type": "string"},
                    },
                },
                "usages": {"type": "array", "items": {"enum": USAGES}},
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    },
                },
            },
        },
    },
}
# RFC 1123 names, one leading wildcard label allowed.
DNS_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_an_issuer_gets_a_certificate_for_clients_and_one_for_the_journal() -> None:
    cluster = spec(tls=ISSUER)
    client, journal = build_certificates(cluster)
    for cert in (client, journal):
        jsonschema.validate(cert, CERTIFICATE_SCHEMA)
        assert cert["spec"]["secretName"] == cert["metadata"]["name"]
        issuer = {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        assert cert["spec"]["issuerRef"] == issuer
        assert cert["metadata"]["ownerReferences"][0]["kind"] == "MemoryCluster"
        assert all(DNS_NAME.match(n) for n in cert["spec"]["dnsNames"])
    assert client["metadata"]["name"] == "demo-tls"
    assert journal["metadata"]["name"] == "demo-journal-tls"
    # Routes dial each other: a journal server's certificate is also a client certificate.
    assert "client auth" in journal["spec"]["usages"] and "server auth" in journal["spec"]["usages"]


def test_the_client_certificate_covers_the_endpoint_and_every_announced_pod_name() -> None:
    cluster = spec(tls=ISSUER)
    names = client_dns_names(cluster)
    assert {"demo", "demo.db", "demo.db.svc", "demo.db.svc.cluster.local"} <= set(names)
    # What CLUSTER SLOTS and MOVED announce (the node config's announce), for any pod of the cluster.
    announced = builders.build_node_config(cluster, "demo-2-1-r1", 2, "zone-a", cluster_id="x").announce
    host = announced.rpartition(":")[0]
    assert f"*.{host.split('.', 1)[1]}" in names
    assert all(not n.startswith("*.") or n.count(".") >= 3 for n in names)


def test_the_journal_certificate_covers_every_journal_url() -> None:
    cluster = spec(tls=ISSUER)
    names = journal_dns_names(cluster)
    for url in builders.journal_urls(cluster):
        host = url.split("://")[1].rsplit(":", 1)[0]
        assert f"*.{host.split('.', 1)[1]}" in names


def test_a_secret_or_a_journal_secret_of_the_users_makes_no_certificate_for_it() -> None:
    assert build_certificates(spec(tls=SECRET)) == []
    assert build_certificates(spec()) == []
    [client] = build_certificates(spec(tls={**ISSUER, "journalSecretName": "mine"}))
    assert client["metadata"]["name"] == "demo-tls"


# --- the journal -----------------------------------------------------------------------------------


def test_the_journal_credentials_are_random_url_safe_and_read_back() -> None:
    cluster = spec(tls=ISSUER)
    first, second = generate_password(), generate_password()
    assert first != second and len(first) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", first)
    secret = build_journal_auth_secret(cluster, first, second)
    validate_manifest(secret)
    auth = journal_auth_of(secret_from_api("demo-journal-auth", secret).data)
    assert auth is not None and (auth.password, auth.route_password) == (first, second)
    assert auth.user != auth.route_user
    assert journal_auth_of({PASSWORD_KEY: b"x"}) is None
    assert journal_auth_of({PASSWORD_KEY: b"has space", ROUTE_PASSWORD_KEY: b"y"}) is None


def test_a_locked_journal_config_is_a_secret_with_tls_and_authorization() -> None:
    cluster = spec(tls=ISSUER)
    placements = plan_journal(ZONES, 3, "Required")
    auth = journal_auth_of(auth_secret().data)
    config = builders.build_journal_config(cluster, placements, auth)
    validate_manifest(config)
    assert config["kind"] == "Secret" and config["metadata"]["name"] == "demo-journal-config"
    text = base64.b64decode(config["data"]["server-0.conf"]).decode()
    assert f'cert_file: "{constants.JOURNAL_TLS_DIR}/tls.crt"' in text
    assert f'ca_file: "{constants.JOURNAL_TLS_DIR}/ca.crt"' in text
    # Clients: the cluster's user only. Routes: their own user, in each route URL.
    assert f'users: [{{user: "engram", password: "{"p" * 43}"}}]' in text
    peer = "demo-journal-1-0.demo-journal.db.svc.cluster.local:6222"
    assert f"nats-route://engram-route:{'r' * 43}@{peer}" in text
    assert text.count("tls {") == 2  # the client port and the routes


def test_an_open_journal_keeps_its_configmap_without_passwords() -> None:
    config = builders.build_journal_config(spec(), plan_journal(ZONES, 3, "Required"))
    assert config["kind"] == "ConfigMap"
    text = config["data"]["server-0.conf"]
    assert "authorization" not in text and "tls {" not in text


def test_a_locked_journal_config_needs_its_credentials() -> None:
    with pytest.raises(ValueError, match="journal-auth"):
        builders.build_journal_config(spec(tls=ISSUER), plan_journal(ZONES, 3, "Required"))


def test_journal_servers_mount_their_certificate_and_the_config_secret() -> None:
    cluster = spec(tls=SECRET)
    sts = builders.build_journal_statefulset(cluster, plan_journal(ZONES, 3, "Required")[1])
    validate_manifest(sts)
    pod_spec = sts["spec"]["template"]["spec"]
    config = volume(pod_spec, "config")["secret"]
    assert config["secretName"] == "demo-journal-config"
    assert config["items"] == [{"key": "server-1.conf", "path": "server.conf"}]
    # Without journalSecretName, a secretName serves the journal too.
    assert volume(pod_spec, "tls")["secret"]["secretName"] == "demo-certs"
    mounts = pod_spec["containers"][0]["volumeMounts"]
    assert {"name": "tls", "mountPath": constants.JOURNAL_TLS_DIR, "readOnly": True} in mounts
    # The monitoring port stays plain HTTP: the kubelet's probes need no certificate.
    assert pod_spec["containers"][0]["readinessProbe"]["httpGet"]["port"] == constants.JOURNAL_MONITOR_PORT


def test_a_journal_secret_name_serves_the_journal_and_gives_nodes_its_ca() -> None:
    pod = engine_pod(tls={**SECRET, "journalSecretName": "demo-journal-certs"})
    assert volume(pod["spec"], "journal-ca")["secret"]["secretName"] == "demo-journal-certs"
    sts = builders.build_journal_statefulset(
        spec(tls={**SECRET, "journalSecretName": "demo-journal-certs"}), plan_journal(ZONES, 3, "Required")[0]
    )
    assert volume(sts["spec"]["template"]["spec"], "tls")["secret"]["secretName"] == "demo-journal-certs"


def test_nodes_get_the_journal_ca_and_their_password_but_no_key_and_no_route_password() -> None:
    pod = engine_pod(tls=ISSUER)
    ca = volume(pod["spec"], "journal-ca")["secret"]
    assert ca["secretName"] == "demo-journal-tls" and ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    auth = volume(pod["spec"], "journal-auth")["secret"]
    assert auth["secretName"] == "demo-journal-auth"
    assert auth["items"] == [{"key": PASSWORD_KEY, "path": PASSWORD_KEY}]
    mounts = {m["name"]: m["mountPath"] for m in container(pod, "node")["volumeMounts"]}
    assert mounts["journal-ca"] == constants.JOURNAL_TLS_DIR
    assert mounts["journal-auth"] == constants.JOURNAL_AUTH_DIR
    assert "journal-ca" not in {m["name"] for m in container(pod, "valkey")["volumeMounts"]}


def test_the_node_config_names_the_journal_credentials_the_engine_reads() -> None:
    pod = engine_pod(tls=ISSUER)
    config = NodeConfig(**json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG]))
    assert config.journal_user == "engram"
    assert config.journal_password_file == f"{constants.JOURNAL_AUTH_DIR}/{PASSWORD_KEY}"
    assert config.journal_ca_file == f"{constants.JOURNAL_TLS_DIR}/ca.crt"
    plain = NodeConfig(**json.loads(engine_pod()["metadata"]["annotations"][labels.NODE_CONFIG]))
    assert (plain.journal_user, plain.journal_password_file, plain.journal_ca_file) == ("", "", "")


def test_the_node_reads_its_mounted_credentials_into_a_tls_connection(tmp_path: Any) -> None:
    """The files the pod mounts, laid out as the kubelet does, give the engine user, password and CA."""
    config = builders.build_node_config(spec(tls=ISSUER), "demo-0-0", 0, "zone-a", cluster_id="x")
    password = tmp_path / "password"
    password.write_text("p" * 43)
    ca = tmp_path / "ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "ca.key"), "-out", str(ca), "-days", "1", "-subj", "/CN=test-ca"],
        check=True, capture_output=True,
    )
    security = JournalSecurity.from_files(config.journal_user, str(password), str(ca))
    options = security.connect_options()
    assert (options["user"], options["password"]) == ("engram", "p" * 43)
    assert isinstance(options["tls"], ssl.SSLContext)


def test_the_provisioning_job_authenticates_with_the_mounted_files() -> None:
    cluster = spec(tls=ISSUER)
    command = provision_command(cluster, CLUSTER_ID)
    flags = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
    assert flags["--journal-user"] == "engram"
    assert flags["--journal-password-file"] == f"{constants.JOURNAL_AUTH_DIR}/{PASSWORD_KEY}"
    assert flags["--journal-ca"] == f"{constants.JOURNAL_TLS_DIR}/ca.crt"
    assert not any("p" * 20 in arg for arg in command)
    job = builders.build_provision_job(cluster, CLUSTER_ID)
    validate_manifest(job)
    pod_spec = job["spec"]["template"]["spec"]
    assert {v["name"] for v in pod_spec["volumes"]} >= {"journal-ca", "journal-auth"}
    assert "--journal-user" not in provision_command(spec(), CLUSTER_ID)


# --- decisions ------------------------------------------------------------------------------------


def test_the_first_reconcile_makes_the_credentials_and_holds_the_journal_back() -> None:
    cluster = spec(tls=ISSUER)
    plan = decide(cluster, just_applied(cluster))
    assert plan.create_journal_auth
    kinds = {kind for kind, _ in children_of(plan)}
    assert "StatefulSet" not in kinds and ("Secret", "demo-journal-config") not in children_of(plan)
    # cert-manager can issue meanwhile.
    assert {("Certificate", "demo-tls"), ("Certificate", "demo-journal-tls")} <= children_of(plan)
    assert any("journal's credentials" in w for w in plan.waiting)


def test_with_its_credentials_the_journal_is_configured_from_them() -> None:
    cluster = spec(tls=ISSUER)
    seen = dataclasses.replace(just_applied(cluster), journal_auth=auth_secret())
    plan = decide(cluster, seen)
    assert not plan.create_journal_auth
    made = {(o["kind"], o["metadata"]["name"]): o for o in plan.create}
    config = made[("Secret", "demo-journal-config")]
    assert "p" * 43 in base64.b64decode(config["data"]["server-0.conf"]).decode()
    assert ("StatefulSet", "demo-journal-0") in made
    assert ("ConfigMap", "demo-journal") not in made


def test_credentials_someone_else_made_are_not_used_or_overwritten() -> None:
    cluster = spec(tls=ISSUER)
    foreign = dataclasses.replace(auth_secret(), owner_uid="someone-else")
    plan = decide(cluster, dataclasses.replace(just_applied(cluster), journal_auth=foreign))
    assert not plan.create_journal_auth
    assert plan.degraded is not None and plan.degraded.reason == "JournalAuthConflict"
    assert not [o for o in plan.create if o["kind"] == "StatefulSet"]


def test_edited_credentials_are_reported_not_regenerated() -> None:
    cluster = spec(tls=ISSUER)
    broken = dataclasses.replace(auth_secret(), data={PASSWORD_KEY: b"ok"})
    plan = decide(cluster, dataclasses.replace(just_applied(cluster), journal_auth=broken))
    assert not plan.create_journal_auth
    assert plan.degraded is not None and plan.degraded.reason == "JournalAuthInvalid"


def test_a_missing_tls_secret_is_waited_for_and_named() -> None:
    cluster = spec(tls=SECRET)
    seen = Observed(
        nodes=just_applied(cluster).nodes,
        pods=[],
        cluster_id=CLUSTER_ID,
        now=NOW,
        journal_auth=auth_secret(),
        tls_secrets={"demo-certs": SecretData("demo-certs")},
    )
    plan = decide(cluster, seen)
    assert any("Secret demo-certs does not exist" in w for w in plan.waiting)
    cert_only = SecretData("demo-certs", True, {"tls.crt": b""})
    partial = dataclasses.replace(seen, tls_secrets={"demo-certs": cert_only})
    assert any("lacks tls.key, ca.crt" in w for w in decide(cluster, partial).waiting)


def test_without_tls_nothing_changes() -> None:
    cluster = spec()
    plan = decide(cluster, just_applied(cluster))
    assert not plan.create_journal_auth
    assert not [o for o in plan.create if o["kind"] == "Certificate"]
    assert ("ConfigMap", "demo-journal") in children_of(plan)
