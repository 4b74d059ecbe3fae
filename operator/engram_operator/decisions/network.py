"""The cluster's NetworkPolicies: create the missing, rewrite the changed, delete the unwanted."""

from __future__ import annotations

from engram_operator.builders.network import OperatorPeer, build_network_policies
from engram_operator.decisions.plan import Plan
from engram_operator.labels import SPEC_HASH
from engram_operator.observe import Observed
from engram_operator.spec import ClusterSpec


def plan_network_policies(
    cluster: ClusterSpec, seen: Observed, plan: Plan, operator: OperatorPeer | None = None
) -> None:
    """Bring the policies the operator made to what the spec wants (none when it turns them off).

    Only policies carrying the operator's labels were observed: one a user made under the same
    name is never touched (its create then fails with AlreadyExists, which is tolerated).
    """
    current = seen.network_policies
    if current is None:
        return  # not listed (the reconcile reports why): deciding blind could delete or duplicate
    wanted = build_network_policies(cluster, operator or OperatorPeer.from_settings())
    for policy in wanted:
        name = policy["metadata"]["name"]
        if name not in current:
            plan.create.append(policy)
        elif current[name] != policy["metadata"]["annotations"][SPEC_HASH]:
            plan.update_policies.append(policy)
    names = {p["metadata"]["name"] for p in wanted}
    plan.delete_policies += sorted(set(current) - names)
