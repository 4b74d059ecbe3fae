"""What a region's journal config needs to be linked to other regions: its JetStream domain and
a leafnodes block (docs/multi-region.md, "Transport").

Pure rendering, included by the journal's config writer (engram.journal.servers) through its
``jetstream_domain`` and ``extra_blocks`` fields. Each region's journal stays its own JetStream
(a domain of its own); a leaf node connection carries only the other region's API requests and
the entries its inbound streams source.
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


def leaf_url(host: str, port: int, scheme: str = "nats-leaf") -> str:
    """A leafnode URL; ``tls`` for the scheme when the listener requires TLS."""
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class LinkAuth:
    """The user another region's servers log in as on this region's leafnode port."""

    user: str
    password: str

    def __post_init__(self) -> None:
        for what, value in (("user", self.user), ("password", self.password)):
            # They travel inside the remote's URL: keep them URL-safe.
            if not value or not _CREDENTIAL.match(value):
                raise LinkConfigError(f"the link {what} must be letters, digits, '-' or '_', not {value!r}")


@dataclass(frozen=True)
class LeafListener:
    """This region's leafnode port, which other regions' journal servers connect to."""

    host: str
    port: int
    auth: LinkAuth | None = None
    tls: ServerTLS | None = None
    # The address other regions reach this server by (a load balancer's), or "" to advertise
    # nothing: a remote that learnt the servers' own addresses would bypass the configured ones.
    advertise: str = ""


@dataclass(frozen=True)
class RegionRemote:
    """A link from this region to another region's leafnode ports (any one of its servers will do)."""

    region: str
    urls: tuple[str, ...]
    auth: LinkAuth | None = None
    # The CA that signed the other region's leafnode certificate; "" for a plain-text link.
    ca_file: str = ""

    def __post_init__(self) -> None:
        check_region(self.region)
        if not self.urls:
            raise LinkConfigError(f"the link to region {self.region} needs at least one leafnode URL")


def _q(value: str) -> str:
    """Quote a string for the NATS config format, which accepts JSON string escapes."""
    return json.dumps(value)


def _with_credentials(url: str, auth: LinkAuth | None) -> str:
    if auth is None:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{auth.user}:{auth.password}@{rest}"


def leafnodes_block(listener: LeafListener | None, remotes: Sequence[RegionRemote] = ()) -> str:
    """The ``leafnodes { ... }`` block of one journal server: the port other regions connect to
    (``listener``) and the links this server opens to other regions (``remotes``).

    Two regions need one link between them, not one each way: a leaf connection carries traffic
    both ways, and a cycle of leaf connections in one account is refused as a loop.
    """
    if listener is None and not remotes:
        raise LinkConfigError("a leafnodes block needs a listener, a remote, or both")
    seen = [r.region for r in remotes]
    if len(set(seen)) != len(seen):
        raise LinkConfigError(f"two links to the same region in {seen}: one per region")
    lines = ["leafnodes {"]
    if listener is not None:
        lines.append(f"  listen: {_q(f'{listener.host}:{listener.port}')}")
        if listener.advertise:
            lines.append(f"  advertise: {_q(listener.advertise)}")
        else:
            lines.append("  no_advertise: true")
        if listener.auth is not None:
            lines += [
                "  authorization {",
                f"    user: {_q(listener.auth.user)}",
                f"    password: {_q(listener.auth.password)}",
                "  }",
            ]
        if listener.tls is not None:
            lines += [
                "  tls {",
                f"    cert_file: {_q(listener.tls.cert_file)}",
                f"    key_file: {_q(listener.tls.key_file)}",
                f"    ca_file: {_q(listener.tls.ca_file)}",
                "    timeout: 2",
                "  }",
            ]
    if remotes:
        lines.append("  remotes: [")
        for remote in remotes:
            urls = ", ".join(_q(_with_credentials(u, remote.auth)) for u in remote.urls)
            lines.append(f"    # region {remote.region}")
            lines.append("    {")
            lines.append(f"      urls: [{urls}]")
            if remote.ca_file:
                lines += ["      tls {", f"        ca_file: {_q(remote.ca_file)}", "      }"]
            lines.append("    }")
        lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def links_of(region: str, regions: Sequence[str]) -> tuple[bool, list[str]]:
    """Which side of each pair opens the link: (whether ``region`` listens, the regions it dials).

    Of two regions, the one whose name sorts first listens and the other dials. Only two regions
    are supported: with three, the links would form a cycle, which NATS refuses as a loop within
    one account (see docs/multi-region.md).
    """
    check_region(region)
    others = sorted(set(regions) - {region})
    if region not in regions:
        raise LinkConfigError(f"region {region!r} is not one of {list(regions)}")
    if len(others) > 1:
        raise LinkConfigError(
            f"{len(others) + 1} regions: linking more than two regions is not built yet "
            "(their leaf connections would form a loop; docs/multi-region.md)"
        )
    if not others:
        return False, []
    listens = region < others[0]
    return listens, [] if listens else others
