"""What a region's journal config needs to be linked to every other region: its JetStream domain,
its accounts and its leafnodes block (docs/multi-region.md, "Transport").

Pure rendering, included by the journal's config writer (engram.journal.servers) through its
``jetstream_domain`` and ``extra_blocks`` fields. Each region's journal stays its own JetStream
(a domain of its own). Every pair of regions is linked both ways, and every leaf connection is
bound to an account of its own, so that links between three or more regions never form the
cycle NATS refuses as a loop; imports and exports between those accounts carry only the other
regions' API requests, the entries inbound streams source, and their flow control.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from engram.journal.servers import ServerTLS

# A region name becomes the JetStream domain and a token of stream names and subjects.
_REGION = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_CREDENTIAL = re.compile(r"^[A-Za-z0-9_-]+$")

# MemoryDB Multi-Region links up to five regions; every region holds a link to every other.
MAX_REGIONS = 5

# The journal's accounts in a region (docs/multi-region.md, "Accounts"): the engine's, holding
# every stream; the one this region's links to other regions are bound to (inbound traffic:
# what this region's inbound streams copy); one per other region, bound to that region's link
# (outbound: what that region copies from here).
ENGINE_ACCOUNT = "ENGRAM"
INBOUND_ACCOUNT = "IN"
# Flow control replies of sourcing consumers: $JS.FC.<origin stream>.<consumer>.<id>.
_FLOW_CONTROL = "$JS.FC.>"
# The engine's user when the journal takes no passwords: clients that give none are it.
PLAIN_ENGINE_USER = "engram"


def outbound_account(region: str) -> str:
    """The account the link from ``region`` is bound to on this region's journal."""
    return f"OUT_{check_region(region)}"


class LinkConfigError(ValueError):
    """A region link that cannot be configured; the message names the field."""


def check_region(region: str) -> str:
    """The region name, if it can name a JetStream domain and a stream; raise LinkConfigError if not."""
    if not _REGION.match(region):
        raise LinkConfigError(
            f"region name {region!r} must start with a lower-case letter and hold only lower-case "
            "letters, digits and '-' (at most 31): it becomes the journal's JetStream domain"
        )
    return region


def domain(region: str) -> str:
    """The JetStream domain of a region's journal: the region's name."""
    return check_region(region)


def api_prefix(region: str) -> str:
    """The subject prefix under which another region reaches this region's JetStream API."""
    return f"$JS.{domain(region)}.API"


def deliver_prefix(region: str) -> str:
    """Where the consumers that feed ``region``'s inbound streams deliver, in the origin region:
    subjects only the link to ``region`` carries."""
    return f"engram.to.{check_region(region)}"


def leaf_url(host: str, port: int, scheme: str = "nats-leaf") -> str:
    """A leafnode URL; ``tls`` for the scheme when the listener requires TLS."""
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class LinkAuth:
    """The link's shared credentials: region R's servers log in to every other region's leafnode
    port as ``<user>-<R>`` (leaf_user), which binds the connection to that region's account for R."""

    user: str
    password: str

    def __post_init__(self) -> None:
        for what, value in (("user", self.user), ("password", self.password)):
            # They travel inside the remote's URL: keep them URL-safe.
            if not value or not _CREDENTIAL.match(value):
                raise LinkConfigError(f"the link {what} must be letters, digits, '-' or '_', not {value!r}")


def leaf_user(auth: LinkAuth, region: str) -> str:
    """The user ``region``'s servers log in as on the other regions' leafnode ports."""
    return f"{auth.user}-{check_region(region)}"


@dataclass(frozen=True)
class LeafListener:
    """This region's leafnode port, which the other regions' journal servers connect to."""

    host: str
    port: int
    tls: ServerTLS | None = None
    # The address other regions reach this server by (a load balancer's), or "" to advertise
    # nothing: a remote that learnt the servers' own addresses would bypass the configured ones.
    advertise: str = ""


@dataclass(frozen=True)
class RegionRemote:
    """Another region and the leafnode URLs of its journal servers (any will do)."""

    region: str
    urls: tuple[str, ...]
    # The CA that signed the other region's leafnode certificate; "" for a plain-text link.
    ca_file: str = ""

    def __post_init__(self) -> None:
        check_region(self.region)
        if not self.urls:
            raise LinkConfigError(f"the link to region {self.region} needs at least one leafnode URL")


@dataclass(frozen=True)
class RegionLinkConfig:
    """One journal server's side of the links: its region, its leafnode port, every other region,
    and the link's credentials."""

    region: str
    listener: LeafListener
    peers: tuple[RegionRemote, ...]
    auth: LinkAuth

    def __post_init__(self) -> None:
        check_region(self.region)
        regions = [p.region for p in self.peers]
        if len(set(regions)) != len(regions):
            raise LinkConfigError(f"two links to the same region in {regions}: one per region")
        if self.region in regions:
            raise LinkConfigError(f"region {self.region} cannot link to itself")
        if not self.peers:
            raise LinkConfigError(f"region {self.region} has no other region to link to")
        if len(self.peers) + 1 > MAX_REGIONS:
            raise LinkConfigError(f"{len(self.peers) + 1} regions: at most {MAX_REGIONS} can be linked")


def _q(value: str) -> str:
    """Quote a string for the NATS config format, which accepts JSON string escapes."""
    return json.dumps(value)


def _with_credentials(url: str, user: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"


def region_blocks(link: RegionLinkConfig, engine_user: tuple[str, str] | None = None) -> tuple[str, ...]:
    """The top-level blocks a region's journal server adds to its config: the accounts and the
    leafnodes block. ``engine_user``: the engine's (user, password) when the journal takes
    passwords; without one, a client that gives none is the engine (``no_auth_user``).

    The journal config then holds its users here, in the engine's account, not in a top-level
    authorization block (JournalServerConfig.users_in_accounts)."""
    return (*_engine_user_lines(engine_user), _accounts(link, engine_user), _leafnodes(link))


def _engine_user_lines(engine_user: tuple[str, str] | None) -> tuple[str, ...]:
    return () if engine_user is not None else (f"no_auth_user: {_q(PLAIN_ENGINE_USER)}",)


def _accounts(link: RegionLinkConfig, engine_user: tuple[str, str] | None) -> str:
    if engine_user is None:
        user = f"{{user: {_q(PLAIN_ENGINE_USER)}}}"
    else:
        user = f"{{user: {_q(engine_user[0])}, password: {_q(engine_user[1])}}}"
    own_deliveries = f"{deliver_prefix(link.region)}.>"
    lines = [
        "accounts {",
        f"  {ENGINE_ACCOUNT} {{",
        "    jetstream: enabled",
        f"    users: [{user}]",
        "    exports: [",
        # The other regions' links reach this region's API, take the entries they source, and
        # send back those consumers' flow control.
        '      {service: "$JS.API.>", response: stream}',
        '      {stream: "engram.to.>"}',
        f"      {{stream: {_q(_FLOW_CONTROL)}}}",
        "    ]",
        "    imports: [",
        f"      {{stream: {{account: {_q(INBOUND_ACCOUNT)}, subject: {_q(own_deliveries)}}}}}",
    ]
    for peer in link.peers:
        lines.append(f"      {{service: {{account: {_q(INBOUND_ACCOUNT)}, "
                     f"subject: {_q(api_prefix(peer.region) + '.>')}}}}}")
        lines.append(f"      {{stream: {{account: {_q(outbound_account(peer.region))}, "
                     f"subject: {_q(_FLOW_CONTROL)}}}}}")
    lines += [
        "    ]",
        "  }",
        f"  {INBOUND_ACCOUNT} {{",
        "    exports: [",
        f"      {{stream: {_q(own_deliveries)}}}",
    ]
    for peer in link.peers:
        lines.append(f"      {{service: {_q(api_prefix(peer.region) + '.>')}, response: stream}}")
    lines += [
        "    ]",
        # Flow control from this region's inbound streams to the other regions' consumers. Only a
        # link account takes it, so a reply that came in over a link never goes out again.
        f"    imports: [{{stream: {{account: {_q(ENGINE_ACCOUNT)}, subject: {_q(_FLOW_CONTROL)}}}}}]",
        "  }",
    ]
    for peer in link.peers:
        lines += [
            f"  {outbound_account(peer.region)} {{",
            "    imports: [",
            f'      {{service: {{account: {_q(ENGINE_ACCOUNT)}, subject: "$JS.API.>"}}}}',
            f"      {{stream: {{account: {_q(ENGINE_ACCOUNT)}, "
            f"subject: {_q(deliver_prefix(peer.region) + '.>')}}}}}",
            "    ]",
            f"    exports: [{{stream: {_q(_FLOW_CONTROL)}}}]",
            # The other region asks for this domain's API; the engine's account serves it.
            f'    mappings: {{{_q(api_prefix(link.region) + ".>")}: "$JS.API.>"}}',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _leafnodes(link: RegionLinkConfig) -> str:
    listener, auth = link.listener, link.auth
    lines = [
        "leafnodes {",
        f"  listen: {_q(f'{listener.host}:{listener.port}')}",
        f"  advertise: {_q(listener.advertise)}" if listener.advertise else "  no_advertise: true",
        "  authorization {",
        "    users: [",
    ]
    for peer in link.peers:
        lines.append(f"      {{user: {_q(leaf_user(auth, peer.region))}, password: {_q(auth.password)}, "
                     f"account: {_q(outbound_account(peer.region))}}}")
    lines += ["    ]", "  }"]
    if listener.tls is not None:
        lines += [
            "  tls {",
            f"    cert_file: {_q(listener.tls.cert_file)}",
            f"    key_file: {_q(listener.tls.key_file)}",
            f"    ca_file: {_q(listener.tls.ca_file)}",
            "    timeout: 2",
            "  }",
        ]
    lines.append("  remotes: [")
    for peer in link.peers:
        user = leaf_user(auth, link.region)
        urls = ", ".join(_q(_with_credentials(u, user, auth.password)) for u in peer.urls)
        lines += [f"    # region {peer.region}", "    {", f"      urls: [{urls}]",
                  f"      account: {_q(INBOUND_ACCOUNT)}"]
        if peer.ca_file:
            lines += ["      tls {", f"        ca_file: {_q(peer.ca_file)}", "      }"]
        lines.append("    }")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def links_of(region: str, regions: Sequence[str]) -> tuple[bool, list[str]]:
    """Which links ``region`` holds among ``regions``: (whether it listens, the regions it dials).

    Every region listens and dials every other (a link carries one direction's copies; see
    region_blocks), so any two regions stay linked whichever others are away."""
    check_region(region)
    if region not in regions:
        raise LinkConfigError(f"region {region!r} is not one of {list(regions)}")
    if len(set(regions)) > MAX_REGIONS:
        raise LinkConfigError(f"{len(set(regions))} regions: at most {MAX_REGIONS} can be linked")
    others = sorted(set(regions) - {region})
    return bool(others), others
