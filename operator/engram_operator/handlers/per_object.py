"""What every resource's handlers share: one lock per object, and events posted on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import kopf

from engram_operator.decisions import Event


def lock_of(memo: kopf.Memo) -> asyncio.Lock:
    """Timer and change handlers of one object run concurrently in kopf; decisions must not."""
    if "lock" not in memo:
        memo["lock"] = asyncio.Lock()
    return memo["lock"]


def emitter(body: kopf.Body) -> Callable[[Event], None]:
    """Posts a decision's events on the object they are about."""
    def emit(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    return emit
