"""Which Kubernetes events one reconcile posts (pure): every action, each lasting state once.

Reconciles run every few seconds. An action (a pod created, a switchover asked for) is news each
time; a state that lasts (a wait, a halted node kept for now, a failing switchover being retried)
is news when it appears or changes, and noise on every later tick. Waits are Normal events: they
are how a cluster makes progress, not errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engram_operator.decisions import Event, Plan, Problem


def waiting_event(plan: Plan) -> Event | None:
    """What the cluster waits for, as one Normal event (None when it waits for nothing)."""
    if not plan.waiting:
        return None
    return Event("Normal", "Waiting", "; ".join(plan.waiting), standing=True)


def failure_events(failures: Sequence[Problem]) -> list[Event]:
    """Actions the API server or an engine node refused this reconcile; the next one retries."""
    return [Event("Warning", f.reason, f"{f.message}; retrying", standing=True) for f in failures]


def degraded_reason(status: Mapping[str, Any] | None) -> str:
    """The reason of a Degraded=True condition in the last written status, or ""."""
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == "Degraded" and cond.get("status") == "True":
            return str(cond.get("reason") or "")
    return ""


def announcements(
    plan: Plan,
    failures: Sequence[Problem],
    previous_status: Mapping[str, Any] | None,
    posted_before: frozenset[Event],
) -> tuple[list[Event], frozenset[Event]]:
    """The events to post now, and the lasting ones to remember for the next reconcile.

    ``posted_before`` is what the previous reconcile of this cluster remembered (kept in memory:
    after an operator restart each lasting state is announced once more). An unsatisfiable spec
    is recognised from the status as well, which survives restarts.
    """
    events = list(plan.events)
    wait = waiting_event(plan)
    if wait is not None:
        events.append(wait)
    events += failure_events(failures)
    already = degraded_reason(previous_status)
    post = []
    for event in events:
        if event.type == "Warning" and already and plan.degraded and event.reason == plan.degraded.reason:
            continue
        if event.standing and event in posted_before:
            continue
        post.append(event)
    return post, frozenset(e for e in events if e.standing)
