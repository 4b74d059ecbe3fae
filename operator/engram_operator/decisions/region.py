"""spec.region: whether a region's journal servers can be configured now, and with which link
credentials (docs/multi-region.md, "On Kubernetes").

The MultiRegionCluster writes spec.region and copies the link's Secrets into this namespace; the
journal servers wait for them, because a journal is configured, linked or not, once, when it is
created. A section that cannot be configured is reported, and the journal is not created.
"""

from __future__ import annotations

from engram.multiregion.link import LinkAuth
from engram_operator.builders.region_link import link_auth_of
from engram_operator.decisions.plan import Event, Plan, Problem
from engram_operator.observe import Observed
from engram_operator.spec import ClusterSpec, region_problems


def plan_region(cluster: ClusterSpec, seen: Observed) -> tuple[bool, LinkAuth | None]:
    """Pure: (whether the journal servers may be configured now, the link's credentials).

    Always (True, None) without spec.region; (True, None) too for a region whose link has no user.
    """
    section = cluster.region
    if section is None:
        return True, None
    if region_problems(cluster):
        return False, None
    if not section.auth_secret:
        return True, None
    if seen.link_auth is None or not seen.link_auth.found:
        return False, None
    auth = link_auth_of(seen.link_auth.data)
    return auth is not None, auth


def refuse_invalid_region(cluster: ClusterSpec, plan: Plan) -> bool:
    """Whether spec.region is one the engine would refuse (a pattern the schema lets through, say),
    said in the plan; the caller then changes nothing, so running pods keep their last good spec."""
    if cluster.region is None or not (problems := region_problems(cluster)):
        return False
    message = "; ".join(problems)
    plan.degraded = Problem("InvalidRegion", message)
    plan.events.append(Event("Warning", "InvalidRegion", message, standing=True))
    plan.waiting.append(f"region: {message}")
    return True


def apply_region(cluster: ClusterSpec, seen: Observed, plan: Plan) -> tuple[bool, LinkAuth | None]:
    """plan_region, with what the plan says about it: a refused section, or the Secret waited for."""
    ready, auth = plan_region(cluster, seen)
    section = cluster.region
    if section is None or ready:
        return ready, auth
    if problems := region_problems(cluster):
        message = "; ".join(problems)
        plan.degraded = plan.degraded or Problem("InvalidRegion", message)
        plan.events.append(Event("Warning", "InvalidRegion", message, standing=True))
        plan.waiting.append(f"region: {message}")
    elif seen.link_auth is None or not seen.link_auth.found:
        plan.waiting.append(
            f"region: the link's credentials, Secret {section.auth_secret} (its MultiRegionCluster "
            f"{section.managed_by or '?'} copies them here)"
        )
    else:
        message = (
            f"Secret {section.auth_secret} lacks its user or password key, or holds characters other "
            "than letters, digits, '-' and '_'"
        )
        plan.degraded = plan.degraded or Problem("LinkSecretInvalid", message)
        plan.events.append(Event("Warning", "LinkSecretInvalid", message, standing=True))
        plan.waiting.append(f"region: {message}")
    return ready, auth
