"""The journal's credentials under spec.tls: one user for the cluster's own processes (nodes, the
provisioning Job) and one for the servers' routes, with random passwords the operator generates
once into the Secret NAME-journal-auth. Anyone else is refused by the journal servers.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from engram.journal.servers import JournalAuth
from engram.orchestration.node_config import JOURNAL_USER
from engram_operator import constants, labels
from engram_operator.builders.common import opaque_secret
from engram_operator.spec import ClusterSpec

ROUTE_USER = "engram-route"
# Keys of NAME-journal-auth. Engine pods and the Job mount PASSWORD_KEY only, never the routes'.
PASSWORD_KEY = "password"
ROUTE_PASSWORD_KEY = "route-password"
PASSWORD_FILE = f"{constants.JOURNAL_AUTH_DIR}/{PASSWORD_KEY}"
JOURNAL_CA_FILE = f"{constants.JOURNAL_TLS_DIR}/{constants.TLS_CA}"


def generate_password() -> str:
    """256 random bits in URL-safe base64: the characters JournalAuth admits (route URLs carry it)."""
    return secrets.token_urlsafe(32)


def build_journal_auth_secret(cluster: ClusterSpec, password: str, route_password: str) -> dict[str, Any]:
    """NAME-journal-auth, owned by the MemoryCluster; created once and never rewritten."""
    return opaque_secret(cluster, labels.journal_auth_secret_name(cluster.name),
                         labels.cluster_labels(cluster.name, labels.TLS),
                         {PASSWORD_KEY: password, ROUTE_PASSWORD_KEY: route_password})


def journal_auth_of(secret_data: Mapping[str, bytes]) -> JournalAuth | None:
    """The credentials a NAME-journal-auth Secret's (decoded) data holds, or None when they are not
    usable (a key missing, or edited to characters a route URL cannot carry)."""
    try:
        return JournalAuth(
            user=JOURNAL_USER,
            password=secret_data[PASSWORD_KEY].decode(),
            route_user=ROUTE_USER,
            route_password=secret_data[ROUTE_PASSWORD_KEY].decode(),
        )
    except (KeyError, UnicodeDecodeError, ValueError):
        return None
