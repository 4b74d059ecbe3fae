"""spec.tls: the cert-manager Certificates the operator asks for, the names they cover, and the
Valkey flags and Secret volumes that serve them.

Valkey (the official image is built with TLS) serves clients over TLS on the client port itself;
the node talks to it over the unix socket, so nothing between them changes. The journal servers get
a certificate of their own, covering their pod names, which nodes verify against its ca.crt.
"""

from __future__ import annotations

from typing import Any

from engram_operator import constants, labels
from engram_operator.builders.common import metadata
from engram_operator.spec import ClusterSpec, TlsSpec

CERT_MANAGER_API = "cert-manager.io/v1"
# Issued keys: ECDSA P-256 (fast handshakes), a new key at every renewal.
PRIVATE_KEY = {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
# Valkey's certificate only serves; a journal server's also dials its peers' routes, which verify it.
CLIENT_USAGES = ["digital signature", "key encipherment", "server auth"]
JOURNAL_USAGES = ["digital signature", "key encipherment", "server auth", "client auth"]


def _service_names(service: str, cluster: ClusterSpec) -> list[str]:
    """Every name a pod of the namespace may use for a Service, shortest first."""
    ns = cluster.namespace
    return [service, f"{service}.{ns}", f"{service}.{ns}.svc", _fqdn(service, cluster)]


def _fqdn(service: str, cluster: ClusterSpec) -> str:
    return f"{service}.{cluster.namespace}.svc.{constants.CLUSTER_DOMAIN}"


def client_dns_names(cluster: ClusterSpec) -> list[str]:
    """What clients dial: the configuration endpoint, and each pod's name through the headless
    Service, which CLUSTER SLOTS and MOVED announce (a wildcard: a replaced pod may be NAME-s-i-rN)."""
    domain = _fqdn(labels.headless_service_name(cluster.name), cluster)
    return [*_service_names(labels.endpoint_service_name(cluster.name), cluster), domain, f"*.{domain}"]


def journal_dns_names(cluster: ClusterSpec) -> list[str]:
    """What nodes, the provisioning Job and peer routes dial: each journal server's pod name."""
    service = labels.journal_service_name(cluster.name)
    return [*_service_names(service, cluster), f"*.{_fqdn(service, cluster)}"]


def _certificate(
    cluster: ClusterSpec, tls: TlsSpec, name: str, dns_names: list[str], usages: list[str]
) -> dict[str, Any]:
    assert tls.issuer is not None
    cert_labels = labels.cluster_labels(cluster.name, labels.TLS)
    return {
        "apiVersion": CERT_MANAGER_API,
        "kind": "Certificate",
        "metadata": metadata(cluster, name, cert_labels),
        "spec": {
            "secretName": name,
            # The Secret is cert-manager's, not owned by the MemoryCluster: labelled so it can be found.
            "secretTemplate": {"labels": cert_labels},
            "dnsNames": dns_names,
            "issuerRef": {"name": tls.issuer.name, "kind": tls.issuer.kind, "group": tls.issuer.group},
            "usages": usages,
            "privateKey": dict(PRIVATE_KEY),
        },
    }


def build_certificates(cluster: ClusterSpec) -> list[dict[str, Any]]:
    """The cert-manager Certificates of a cluster with spec.tls.issuerRef (none otherwise): the
    clients', and the journal's unless spec.tls.journalSecretName names a Secret of the user's."""
    tls = cluster.tls
    if tls is None or tls.issuer is None:
        return []
    client = labels.tls_secret_name(cluster.name)
    certs = [_certificate(cluster, tls, client, client_dns_names(cluster), CLIENT_USAGES)]
    if not tls.journal_secret_name:
        certs.append(
            _certificate(
                cluster,
                tls,
                labels.journal_tls_secret_name(cluster.name),
                journal_dns_names(cluster),
                JOURNAL_USAGES,
            )
        )
    return certs


def tls_secret_names(cluster: ClusterSpec) -> list[str]:
    """The Secrets the cluster's pods mount for TLS (client first), without repeats."""
    if cluster.tls is None:
        return []
    names = [cluster.tls.client_secret(cluster.name), cluster.tls.journal_secret(cluster.name)]
    return list(dict.fromkeys(names))


def valkey_tls_flags() -> list[str]:
    """Valkey's flags for TLS on the client port (the plain port is then 0: off), and for the MIGRATEs
    of an online reshard, which reach other pods on that port. Clients authenticate with AUTH."""
    return [
        "--tls-port", str(constants.CLIENT_PORT),
        "--tls-cert-file", f"{constants.TLS_DIR}/{constants.TLS_CERT}",
        "--tls-key-file", f"{constants.TLS_DIR}/{constants.TLS_KEY}",
        "--tls-ca-cert-file", f"{constants.TLS_DIR}/{constants.TLS_CA}",
        # No client certificate is asked for. Valkey's MIGRATE shows its own (a server-auth-only
        # certificate, as the operator has issued) to the target, which would verify it as a
        # client's and refuse it; a certificate that need not be shown authenticated no one anyway.
        "--tls-auth-clients", "no",
        # MIGRATE dials with TLS (Valkey uses its cluster connection type for it), verifying the
        # target's certificate against the CA.
        "--tls-cluster", "yes",
    ]


# Readable by the pod's group only (fsGroup): private keys among them.
SECRET_MODE = 0o440


def secret_volume(name: str, secret: str, keys: list[str] | None = None) -> dict[str, Any]:
    """A Secret volume; ``keys`` limits it to those keys (the CA without the server's private key)."""
    source: dict[str, Any] = {"secretName": secret, "defaultMode": SECRET_MODE}
    if keys is not None:
        source["items"] = [{"key": k, "path": k} for k in keys]
    return {"name": name, "secret": source}
