"""What a reconcile waits for (status.waiting): journal servers and engine pods not ready yet, zones
and nodes that blink."""

from __future__ import annotations

from engram_operator import availability, constants
from engram_operator.decisions.plan import Plan
from engram_operator.observe import Observed
from engram_operator.spec import ClusterSpec

TLS_KEYS = (constants.TLS_CERT, constants.TLS_KEY, constants.TLS_CA)


def _wait_reasons(cluster: ClusterSpec, seen: Observed, plan: Plan) -> None:
    if seen.journal_ready < cluster.journal.replicas:
        plan.waiting.append(f"journal servers ready: {seen.journal_ready}/{cluster.journal.replicas}")
    issued = cluster.tls is not None and cluster.tls.issuer is not None
    for name, secret in sorted(seen.tls_secrets.items()):
        if not secret.found:
            source = "its cert-manager Certificate is not issued yet" if issued else "spec.tls names it"
            plan.waiting.append(f"tls: Secret {name} does not exist ({source}); pods mounting it wait")
        elif missing := [k for k in TLS_KEYS if k not in secret.data]:
            plan.waiting.append(f"tls: Secret {name} lacks {', '.join(missing)}; TLS needs all three")
    want = cluster.shards * cluster.nodes_per_shard
    ready = sum(1 for p in seen.pods if p.ready and not p.deleting)
    if ready < want:
        plan.waiting.append(f"engine pods ready: {ready}/{want}")
    # Said without a running count, so that the wait is announced once, not on every reconcile.
    grace = f"{availability.NODE_LOSS_GRACE:g}s"
    ours = {p.zone for p in seen.pods if not p.deleting}
    for zone in sorted(seen.blinking_zones() & ours):
        plan.waiting.append(f"zone {zone} has no Ready node: its pods stay unless it lasts {grace}")
    for node in sorted({n.name for n in seen.nodes if n.blinking(seen.now)}):
        hosted = [p for p in seen.pods if p.node == node and not p.deleting]
        if hosted and not any(p.zone in seen.blinking_zones() for p in hosted):
            plan.waiting.append(f"node {node} is not Ready: its pods stay unless it lasts {grace}")
