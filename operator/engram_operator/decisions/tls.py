"""spec.tls: whether the cluster's TLS and journal credentials can be used, and the credentials
Secret to make first.

The journal's passwords are generated once (the operator writes NAME-journal-auth, then renders the
journal config from it on the next reconcile) and never rotated by the operator: a new password
would lock out every running node and journal route at once. A Secret edited or made by someone
else is reported, not overwritten.
"""

from __future__ import annotations

from engram.journal.servers import JournalAuth
from engram_operator import labels
from engram_operator.builders.journal_auth import journal_auth_of
from engram_operator.decisions.plan import Event, Plan, Problem
from engram_operator.observe import Observed
from engram_operator.spec import ClusterSpec, tls_problems


def plan_tls(cluster: ClusterSpec, seen: Observed) -> tuple[bool, JournalAuth | None]:
    """Pure: (whether the journal servers may be configured now, the journal credentials).

    Always (True, None) without spec.tls. The plan changes are made by ``apply_tls``.
    """
    if cluster.tls is None:
        return True, None
    if tls_problems(cluster) or seen.journal_auth is None or seen.journal_auth.owner_uid != cluster.uid:
        return False, None
    auth = journal_auth_of(seen.journal_auth.data)
    return auth is not None, auth


def apply_tls(cluster: ClusterSpec, seen: Observed, plan: Plan) -> tuple[bool, JournalAuth | None]:
    """plan_tls, with what the plan must do or say about it: create the credentials Secret, or
    report a spec.tls or a Secret that cannot be used."""
    ready, auth = plan_tls(cluster, seen)
    if cluster.tls is None or ready:
        return ready, auth
    name = labels.journal_auth_secret_name(cluster.name)

    def refuse(reason: str, message: str) -> None:
        plan.degraded = plan.degraded or Problem(reason, message)
        plan.events.append(Event("Warning", reason, message, standing=True))
        plan.waiting.append(f"tls: {message}")

    if problems := tls_problems(cluster):
        refuse("InvalidTLS", "; ".join(problems))
    elif seen.journal_auth is None:
        plan.create_journal_auth = True
        plan.waiting.append(f"tls: creating the journal's credentials in Secret {name}")
    elif seen.journal_auth.owner_uid != cluster.uid:
        refuse(
            "JournalAuthConflict",
            f"Secret {name} exists and is not this MemoryCluster's: delete or rename it, the operator "
            "keeps the journal's generated passwords there",
        )
    else:
        refuse(
            "JournalAuthInvalid",
            f"Secret {name} lacks its password or route-password key, or holds characters other than "
            "letters, digits, '-' and '_': restore it (the journal servers' config still holds the "
            "passwords), or delete the MemoryCluster",
        )
    return ready, auth
