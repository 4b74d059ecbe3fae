"""nats-server configuration for one journal server of a zone-spread JetStream cluster.

Pure rendering, shared by the local platform and the Kubernetes operator's ConfigMap.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

# The tag prefix that JetStream's placement keeps unique across a stream's replicas.
ZONE_TAG = "az"
DEFAULT_MAX_PAYLOAD = 1024 * 1024
_DURATION = re.compile(r"^\d+(ns|us|ms|s|m|h)$")
_ZONE = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
# A JetStream domain becomes a subject token ($JS.<domain>.API): no dots, spaces or wildcards.
_DOMAIN = re.compile(r"^[A-Za-z0-9_-]+$")


# The journal's default: every write fsynced before it is acknowledged.
SYNC_ALWAYS = "always"


def sync_interval_problem(value: str) -> str:
    """Why `value` is not a journal sync setting ("always" or a duration like "100ms"); "" if it is."""
    if value == SYNC_ALWAYS or _DURATION.match(value):
        return ""
    return f"the journal sync must be 'always' or a duration like '100ms' or '1s', not {value!r}"


def zone_tag(zone: str) -> str:
    """The server tag that places a journal server in a zone, e.g. ``az:us-east-1a``."""
    return f"{ZONE_TAG}:{zone}"


def route_url(host: str, port: int) -> str:
    """A cluster route URL for a peer's cluster port."""
    return f"nats-route://{host}:{port}"


@dataclass(frozen=True)
class ServerTLS:
    """A journal server's certificate and the CA its clients and peers verify it with (PEM files)."""

    cert_file: str
    key_file: str
    ca_file: str


@dataclass(frozen=True)
class JournalAuth:
    """Who may use the journal: the cluster's processes as ``user``, and the servers' routes to each
    other as ``route_user``. Anyone else is refused, so only the cluster itself can append."""

    user: str
    password: str
    route_user: str
    route_password: str

    def __post_init__(self) -> None:
        for what, value in (("user", self.user), ("password", self.password),
                            ("route user", self.route_user), ("route password", self.route_password)):
            # Route credentials travel inside route URLs: keep them to URL-safe characters.
            if not value or not _CREDENTIAL.match(value):
                raise ValueError(f"the journal {what} must be letters, digits, '-' or '_', not {value!r}")


_CREDENTIAL = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class JournalServerConfig:
    """One journal server: its identity, ports, zone and peers."""

    server_name: str
    zone: str
    store_dir: str
    cluster_name: str
    # Routes to the peers' cluster ports; a route to the server itself is harmless (NATS skips it),
    # so every server of a StatefulSet can share one list. Empty: a single, unclustered server.
    routes: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 4222
    cluster_host: str = ""
    cluster_port: int = 6222
    # Monitoring (HTTP) port for /healthz and /jsz; None leaves it off.
    http_port: int | None = None
    # "always" fsyncs every write before it is acknowledged: a plain ack otherwise only means a
    # quorum holds the entry in memory (Jepsen lost acknowledged writes on 2.12.1 without it).
    sync_interval: str = "always"
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_file_store: int | None = None
    max_memory_store: int | None = None
    # Extra server tags beyond the zone tag (e.g. "engram:journal").
    extra_tags: tuple[str, ...] = field(default_factory=tuple)
    # TLS on the client port and between servers; plain text when None.
    tls: ServerTLS | None = None
    # Users and passwords; anyone may connect when None.
    auth: JournalAuth | None = None
    # The JetStream domain: a region's journal of a multi-region cluster has one of its own, so
    # that linked regions' JetStreams stay apart (docs/multi-region.md). Empty: none.
    jetstream_domain: str = ""
    # Whole top-level blocks appended to the file, e.g. a region's leafnodes block
    # (engram.multiregion.link); each is rendered by its owner.
    extra_blocks: tuple[str, ...] = ()
    # The extra blocks define accounts that hold the users (a region's, engram.multiregion.link):
    # no top-level authorization block then, which NATS would not combine with them.
    users_in_accounts: bool = False

    def __post_init__(self) -> None:
        if self.jetstream_domain and not _DOMAIN.match(self.jetstream_domain):
            raise ValueError(
                f"JetStream domain {self.jetstream_domain!r} may only hold letters, digits, '-' and '_'"
            )
        if not _ZONE.match(self.zone):
            raise ValueError(
                f"zone {self.zone!r} must be lower-case letters, digits, '.', '_' or '-' "
                "(it becomes the server tag az:<zone>)"
            )
        if problem := sync_interval_problem(self.sync_interval):
            raise ValueError(problem)
        if self.max_payload <= 0:
            raise ValueError(f"max_payload must be positive, got {self.max_payload}")

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def tags(self) -> tuple[str, ...]:
        return (zone_tag(self.zone), *self.extra_tags)


def _q(value: str) -> str:
    """Quote a string for the NATS config format, which accepts JSON string escapes."""
    return json.dumps(value)


def render_config(server: JournalServerConfig) -> str:
    """The nats-server configuration file text for one journal server."""
    tags = ", ".join(_q(t) for t in server.tags)
    lines = [
        f"# Engram journal server {server.server_name} (zone {server.zone}); generated, do not edit.",
        f"server_name: {_q(server.server_name)}",
        f"listen: {_q(f'{server.host}:{server.port}')}",
        f"server_tags: [{tags}]",
        f"max_payload: {server.max_payload}",
    ]
    if server.http_port is not None:
        lines.append(f"http: {_q(f'{server.host}:{server.http_port}')}")
    if server.tls is not None:
        lines += ["", *_tls_block(server.tls, "")]
    if server.auth is not None and not server.users_in_accounts:
        lines += [
            "",
            "authorization {",
            f"  users: [{{user: {_q(server.auth.user)}, password: {_q(server.auth.password)}}}]",
            "}",
        ]
    lines += [
        "",
        "jetstream {",
        f"  store_dir: {_q(server.store_dir)}",
        f"  unique_tag: {_q(ZONE_TAG)}",
        f"  sync_interval: {_q(server.sync_interval)}",
    ]
    if server.jetstream_domain:
        lines.append(f"  domain: {_q(server.jetstream_domain)}")
    if server.max_file_store is not None:
        lines.append(f"  max_file_store: {server.max_file_store}")
    if server.max_memory_store is not None:
        lines.append(f"  max_memory_store: {server.max_memory_store}")
    lines.append("}")
    if server.routes:
        cluster_host = server.cluster_host or server.host
        auth = server.auth
        routes = ",\n".join(
            f"    {_q(_with_credentials(r, auth.route_user, auth.route_password) if auth else r)}"
            for r in server.routes
        )
        lines += [
            "",
            "cluster {",
            f"  name: {_q(server.cluster_name)}",
            f"  listen: {_q(f'{cluster_host}:{server.cluster_port}')}",
        ]
        if server.tls is not None:
            lines += _tls_block(server.tls, "  ")
        if auth is not None:
            lines += [
                "  authorization {",
                f"    user: {_q(auth.route_user)}",
                f"    password: {_q(auth.route_password)}",
                "  }",
            ]
        lines += [
            "  routes: [",
            routes,
            "  ]",
            "}",
        ]
    for block in server.extra_blocks:
        lines += ["", block.rstrip("\n")]
    return "\n".join(lines) + "\n"


def _tls_block(tls: ServerTLS, indent: str) -> list[str]:
    return [
        f"{indent}tls {{",
        f"{indent}  cert_file: {_q(tls.cert_file)}",
        f"{indent}  key_file: {_q(tls.key_file)}",
        f"{indent}  ca_file: {_q(tls.ca_file)}",
        f"{indent}  timeout: 2",
        f"{indent}}}",
    ]


def _with_credentials(url: str, user: str, password: str) -> str:
    """nats-route://host:port with the route user's credentials in it."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"
