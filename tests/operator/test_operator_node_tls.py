"""spec.tls on the node's own ports: the node serves the cluster's certificate on its control and
metrics ports and has Valkey reload it; the operator, the probes and the hook speak TLS to it."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, spec
from k8s_offline import validate_manifest
from tests.certificates import TestCA

from engram.node.config import NodeConfig
from engram_operator import builders, constants, kube, labels, probe
from engram_operator.builders.engine import METRICS_TLS_PORT_NAME, TLS_CA_FILE
from engram_operator.observe import PodInfo, pod_from_api

SECRET = {"secretName": "demo-certs"}


def _pod(**overrides: Any) -> dict[str, Any]:
    return builders.build_engine_pod(
        spec(**overrides), name="demo-0-0", shard=0, index=0, zone="zone-a", cluster_id=CLUSTER_ID
    )


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def _node_config(pod: dict[str, Any]) -> NodeConfig:
    return NodeConfig(**json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG]))


def test_a_tls_clusters_node_serves_valkeys_certificate_and_has_valkey_reload_it() -> None:
    pod = _pod(tls=SECRET)
    validate_manifest(pod)
    config = _node_config(pod)
    assert (config.tls_cert_file, config.tls_key_file, config.tls_ca_file) == (
        f"{constants.TLS_DIR}/tls.crt",
        f"{constants.TLS_DIR}/tls.key",
        TLS_CA_FILE,
    )
    # Valkey serves clients itself: the node terminates no TLS, it asks Valkey to reload.
    assert config.valkey_tls and not config.tls_port
    # The same files Valkey is started with.
    valkey = _container(pod, "valkey")["command"]
    assert valkey[valkey.index("--tls-cert-file") + 1] == config.tls_cert_file
    assert valkey[valkey.index("--tls-key-file") + 1] == config.tls_key_file
    mount = {"name": "tls", "mountPath": constants.TLS_DIR, "readOnly": True}
    assert mount in _container(pod, "node")["volumeMounts"]


def test_a_tls_clusters_probe_and_hook_speak_tls_to_the_control_port() -> None:
    pod = _pod(tls=SECRET)
    node, valkey = _container(pod, "node"), _container(pod, "valkey")
    command = node["readinessProbe"]["exec"]["command"]
    assert command[command.index("--tls-ca") + 1] == TLS_CA_FILE
    hook = valkey["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert f"valkey-cli --tls --cacert {TLS_CA_FILE} -p {constants.ADMIN_PORT} ENGRAM.STATUS" in hook
    # A TCP connect is all the startup and liveness probes ask: TLS changes nothing there.
    assert node["startupProbe"]["tcpSocket"]["port"] == constants.ADMIN_PORT
    assert {"name": METRICS_TLS_PORT_NAME, "containerPort": constants.METRICS_PORT} in node["ports"]


def test_a_plain_clusters_node_keeps_every_port_and_probe_plain() -> None:
    pod = _pod()
    config = _node_config(pod)
    assert config.tls_files is None and not config.valkey_tls
    node, valkey = _container(pod, "node"), _container(pod, "valkey")
    assert "--tls-ca" not in node["readinessProbe"]["exec"]["command"]
    assert "--tls" not in valkey["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert {"name": "metrics", "containerPort": constants.METRICS_PORT} in node["ports"]
    assert "tls" not in {m["name"] for m in node["volumeMounts"]}


def test_the_operator_knows_from_each_pods_config_whether_its_control_port_speaks_tls() -> None:
    tls_pod, plain_pod = _pod(tls=SECRET), _pod()
    for pod in (tls_pod, plain_pod):
        pod["status"] = {"phase": "Running", "podIP": "10.0.0.7"}
    tls_info, plain_info = pod_from_api(tls_pod), pod_from_api(plain_pod)
    assert tls_info is not None and plain_info is not None
    assert tls_info.control_tls and not plain_info.control_tls


def _ca_secret(ca_pem: str) -> dict[str, Any]:
    return {"data": {"ca.crt": base64.b64encode(ca_pem.encode()).decode()}}


def test_the_operator_verifies_a_tls_pods_control_port_by_the_pods_dns_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    ca = TestCA()
    ca.write_ca(tmp_path / "ca.pem")
    asked: list[tuple[str, str]] = []

    async def get_secret(namespace: str, name: str) -> dict[str, Any]:
        asked.append((namespace, name))
        return _ca_secret((tmp_path / "ca.pem").read_text())

    monkeypatch.setattr(kube, "get_secret", get_secret)
    cluster = spec(tls=SECRET)
    tls = asyncio.run(probe.cluster_control_tls(cluster))
    assert tls is not None and asked == [(cluster.namespace, "demo-certs")]
    rolled = probe.target(PodInfo("demo-0-0", 0, 0, "zone-a", ip="10.0.0.7", control_tls=True), tls)
    assert rolled.tls is tls
    assert tls.server_name("demo-0-0") == f"demo-0-0.demo-nodes.{cluster.namespace}.svc.cluster.local"
    # A pod an older operator made serves plain text until it is rolled.
    older = probe.target(PodInfo("demo-0-1", 0, 1, "zone-a", ip="10.0.0.8"), tls)
    assert older.tls is None


def test_a_plain_cluster_reads_no_secret_for_its_control_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    async def get_secret(namespace: str, name: str) -> None:
        raise AssertionError("no Secret is read without spec.tls")

    monkeypatch.setattr(kube, "get_secret", get_secret)
    assert asyncio.run(probe.cluster_control_tls(spec())) is None
