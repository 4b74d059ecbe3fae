"""The users file (Valkey's ACL file format) rendered from spec.users, and the Secret that holds it.

Passwords are written as Valkey's ``#<sha256>``, never in clear. The output is sorted and
deterministic, so that an unchanged spec and unchanged passwords never rewrite the Secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from engram_operator import constants, labels
from engram_operator.builders.common import opaque_secret
from engram_operator.spec import ClusterSpec, UserSpec

HEADER = (
    "# Written by the Engram operator from MemoryCluster {name}'s spec.users; edits here are overwritten.\n"
)


def password_hash(password: bytes) -> str:
    """Valkey's hashed form of a password: the hex SHA-256 of its bytes (ACL SETUSER #<hash>)."""
    return hashlib.sha256(password).hexdigest()


def user_line(user: UserSpec, password: bytes | None) -> str:
    """One ``user NAME RULES`` line; a user with a password is switched on before its own rules,
    so that ``off`` in them still wins."""
    words = ["user", user.name]
    if password is not None:
        words += ["on", f"#{password_hash(password)}"]
    if user.rules.strip():
        words += user.rules.split()
    return " ".join(words)


def render_users_file(cluster_name: str, users: Iterable[UserSpec], passwords: Mapping[str, bytes]) -> str:
    """The users file: one line per user, sorted by name. ``passwords`` maps user name to password
    (users without a passwordSecret are absent); an empty ``users`` gives a file declaring none."""
    lines = [user_line(u, passwords.get(u.name)) for u in sorted(users, key=lambda u: u.name)]
    return HEADER.format(name=cluster_name) + "".join(f"{line}\n" for line in lines)


def build_users_secret(cluster: ClusterSpec, text: str) -> dict[str, Any]:
    """The NAME-users Secret every engine pod mounts at constants.USERS_DIR."""
    return opaque_secret(cluster, labels.users_secret_name(cluster.name),
                         labels.cluster_labels(cluster.name, labels.USERS), {constants.USERS_FILE: text})


def users_file_of(secret_data: Mapping[str, bytes]) -> str | None:
    """The users file a Secret's (decoded) data holds, or None when it holds none readable."""
    raw = secret_data.get(constants.USERS_FILE)
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None
