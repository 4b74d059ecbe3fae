"""The cluster's users, kept in its metadata so that every node of every shard has them.

Valkey never replicates users. The module holds the reply to ACL SETUSER/DELUSER until the node
has stored the user's resulting rules here (passwords hashed, as ACL LIST shows them); every node
then makes its Valkey's users match. See docs/security.md.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

USER_PREFIX = "user."


def user_key(name: str) -> str:
    """The metadata key of a user: any name Valkey accepts, in the characters keys may hold."""
    return USER_PREFIX + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def user_name(key: str) -> str:
    encoded = key[len(USER_PREFIX):]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def dump_rules(rules: str | None) -> bytes:
    """A user's record; None records that the user was deleted."""
    return json.dumps({"rules": rules}).encode()


def load_rules(value: bytes | None) -> str | None:
    if not value:
        return None
    rules = json.loads(value).get("rules")
    if rules is not None and not isinstance(rules, str):
        raise ValueError(f"a user's rules must be a string, not {type(rules).__name__}")
    return rules


@dataclass
class Users:
    """The users as the metadata holds them, each with the revision it was stored at."""

    records: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    # Bumped on every change, so the node knows when to apply them again.
    version: int = 0
    # The metadata watch delivered every stored user: until then an empty set proves nothing.
    loaded: bool = False

    def offer(self, name: str, revision: int, rules: str | None) -> bool:
        """Take a stored value unless a newer one is known already (the node's own store can land
        in the view before the watch delivers an older one)."""
        current = self.records.get(name)
        if current is not None and current[0] >= revision:
            return False
        self.records[name] = (revision, rules)
        self.version += 1
        return True

    def apply_args(self, declared: dict[str, str] | None = None) -> list[str]:
        """ENGRAM.USERS.APPLY's arguments: name and rules of every user that exists; a declared
        user's rules win over whatever clients stored for it."""
        users = {name: rules for name, (_, rules) in self.records.items() if rules is not None}
        users.update(declared or {})
        args: list[str] = []
        for name in sorted(users):
            args += [name, users[name]]
        return args


class UsersFileError(ValueError):
    """A users file that cannot be read as Valkey's ACL file format."""


def parse_users(text: str, source: str) -> dict[str, str]:
    """Users declared in Valkey's ACL file format: `user NAME RULES...` a line; blank lines and
    lines starting with # are skipped. Rules are checked by Valkey when they are applied."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] != "user" or len(words) < 2:
            raise UsersFileError(f"{source} line {number}: expected 'user NAME RULES...', got {line[:60]!r}")
        name = words[1]
        if name in users:
            raise UsersFileError(f"{source} line {number}: user {name!r} is declared twice")
        users[name] = " ".join(words[2:])
    return users
