"""MemoryCluster lifecycle: create, update, resume and a timer all run the same reconcile."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from engram_operator import GROUP, PLURAL, VERSION
from engram_operator.handlers.per_object import emitter, lock_of
from engram_operator.reconcile import reconcile

RESYNC_SECONDS = 5.0


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
    async with lock_of(memo):
        await reconcile(body, patch.status, emitter(body), logger, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    """Replace lost pods, follow role changes and refresh status between spec changes."""
    async with lock_of(memo):
        await reconcile(body, patch.status, emitter(body), logger, memo)
