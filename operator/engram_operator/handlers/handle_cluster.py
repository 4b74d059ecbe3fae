"""MemoryCluster lifecycle: create, update, resume and a timer all run the same reconcile."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from engram_operator import GROUP, PLURAL, VERSION
from engram_operator.decisions import Event
from engram_operator.reconcile import reconcile

RESYNC_SECONDS = 5.0


def _lock(memo: kopf.Memo) -> asyncio.Lock:
    """Timer and change handlers of one cluster run concurrently in kopf; decisions must not."""
    if "lock" not in memo:
        memo["lock"] = asyncio.Lock()
    return memo["lock"]


def _emitter(body: kopf.Body) -> Any:
    def emit(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    return emit


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def converge(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    """Act on a new or changed spec at once; the timer carries the cluster the rest of the way.

    Waiting is not an error: raising kopf.TemporaryError for it posted an Error event every few
    seconds. The reconcile posts what it waits for as a Normal event, when that changes.
    """
    async with _lock(memo):
        await reconcile(body, patch.status, _emitter(body), logger, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    """Replace lost pods, follow role changes and refresh status between spec changes."""
    async with _lock(memo):
        await reconcile(body, patch.status, _emitter(body), logger, memo)
