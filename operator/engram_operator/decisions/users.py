"""spec.users: the users file every engine node reads, kept in the NAME-users Secret.

A password Secret that is missing, or lacks its key, must not change the file: the users it
declares would be deleted on every node and their clients locked out. The file as last written
stays, UsersReady says what is missing, and a Warning event says it once. A new cluster's engine
pods wait for a first complete file rather than start with fewer users than declared (a
`default` user declared with a password would otherwise be open to anyone).
"""

from __future__ import annotations

from engram.cluster.users import UsersFileError, parse_users
from engram_operator import labels
from engram_operator.builders.users import build_users_secret, render_users_file, users_file_of
from engram_operator.conditions import Condition
from engram_operator.decisions.plan import Event, Plan
from engram_operator.observe import Observed, SecretData
from engram_operator.spec import ClusterSpec, users_problems

# Secret volumes are refreshed by the kubelet's periodic sync, not at once.
REFRESH_NOTE = "engine nodes read it again when the kubelet refreshes their copy (within a minute or two)"


def resolve_passwords(cluster: ClusterSpec, seen: Observed) -> tuple[dict[str, bytes], list[str]]:
    """Each declared user's password (by user name) from its passwordSecret, and what is missing.

    The value is taken byte for byte: a trailing newline (``kubectl create secret --from-file`` of
    a file ending in one) is part of the password.
    """
    passwords: dict[str, bytes] = {}
    missing: list[str] = []
    for user in cluster.users:
        ref = user.password_secret
        if ref is None:
            continue
        secret = seen.password_secrets.get(ref.name) or SecretData(ref.name)
        where = f"spec.users[{user.name}].passwordSecret"
        if secret.error:
            missing.append(f"{where}: Secret {ref.name} cannot be read ({secret.error})")
        elif not secret.found:
            missing.append(f"{where}: Secret {ref.name} not found in namespace {cluster.namespace}")
        elif ref.key not in secret.data:
            missing.append(f"{where}: Secret {ref.name} has no key {ref.key}")
        elif not secret.data[ref.key]:
            missing.append(f"{where}: key {ref.key} of Secret {ref.name} is empty")
        else:
            passwords[user.name] = secret.data[ref.key]
    return passwords, missing


def changed_users(before: str | None, after: str) -> str:
    """Which users a new users file adds, changes and removes, in words (no rules, no hashes)."""
    try:
        old = parse_users(before or "", "before")
        new = parse_users(after, "after")
    except UsersFileError:
        return "the users file was rewritten"
    parts = [
        (word, sorted(names))
        for word, names in (
            ("added", new.keys() - old.keys()),
            ("changed", {n for n in new.keys() & old.keys() if new[n] != old[n]}),
            ("removed", old.keys() - new.keys()),
        )
        if names
    ]
    return "; ".join(f"{word}: {', '.join(names)}" for word, names in parts) or "no user changed"


def plan_users(cluster: ClusterSpec, seen: Observed, plan: Plan) -> bool:
    """Plan the users Secret's write and the UsersReady condition.

    Returns whether new engine pods may start: the cluster's users Secret exists, or this plan
    writes it (pods mount it, and must never run without it).
    """
    name = labels.users_secret_name(cluster.name)
    current = seen.users_secret
    ours = current is None or current.owner_uid == cluster.uid
    exists = current is not None and ours
    kept = (
        f"; the users file as last written stays in Secret {name}, so the users it declares keep working"
        if exists
        else "; new engine pods wait for a first complete users file"
    )

    def not_ready(reason: str, problems: list[str]) -> bool:
        message = "; ".join(problems) + kept
        plan.users = Condition("UsersReady", "False", reason, message)
        plan.events.append(Event("Warning", reason, message, standing=True))
        if not exists:
            plan.waiting.append(f"users: {'; '.join(problems)}")
        return exists

    if not ours:
        return not_ready(
            "UsersSecretConflict",
            [f"Secret {name} exists and is not this MemoryCluster's: delete or rename it, the operator "
             "writes the users file there"],
        )
    problems = users_problems(cluster)
    if problems:
        return not_ready("InvalidUsers", problems)
    passwords, missing = resolve_passwords(cluster, seen)
    if missing:
        return not_ready("PasswordSecretMissing", missing)
    text = render_users_file(cluster.name, cluster.users, passwords)
    before = users_file_of(current.data) if current is not None else None
    if current is None or before != text:
        plan.users_secret = build_users_secret(cluster, text)
        if current is not None:
            said = f"Secret {name}: {changed_users(before, text)}; {REFRESH_NOTE}"
            plan.events.append(Event("Normal", "UsersUpdated", said))
    declared = ", ".join(sorted(u.name for u in cluster.users))
    plan.users = Condition(
        "UsersReady",
        "True",
        "UsersFileCurrent",
        f"Secret {name} declares {len(cluster.users)} user(s): {declared}; {REFRESH_NOTE}"
        if cluster.users
        else f"no users declared in spec.users: Secret {name} holds an empty users file, and the users "
        "are those clients make with ACL SETUSER",
    )
    return True
