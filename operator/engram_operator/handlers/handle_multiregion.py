"""MultiRegionCluster lifecycle: create, update, resume and a timer all run the same reconcile;
deletion removes the regions' MemoryClusters it made (multiregion_reconcile.py)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from engram_operator import GROUP, MULTIREGION_PLURAL, VERSION
from engram_operator.handlers.per_object import emitter, lock_of
from engram_operator.multiregion_reconcile import delete_regions, reconcile_regions

# The lag is read from every region's journal on each pass: less often than a MemoryCluster's.
RESYNC_SECONDS = 15.0


@kopf.on.create(GROUP, VERSION, MULTIREGION_PLURAL)
@kopf.on.update(GROUP, VERSION, MULTIREGION_PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, MULTIREGION_PLURAL)
async def converge_regions(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    """Act on a new or changed spec at once; the timer carries it the rest of the way."""
    async with lock_of(memo):
        await reconcile_regions(body, patch.status, emitter(body), logger, memo)


@kopf.timer(GROUP, VERSION, MULTIREGION_PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync_regions(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    """Follow the regions' readiness and refresh the lag between spec changes."""
    async with lock_of(memo):
        await reconcile_regions(body, patch.status, emitter(body), logger, memo)


@kopf.on.delete(GROUP, VERSION, MULTIREGION_PLURAL)
async def delete_multiregion(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """Holds the finalizer until the regions' MemoryClusters it made are gone."""
    remaining = await delete_regions(body, logger)
    if remaining:
        raise kopf.TemporaryError(f"waiting for {remaining} region MemoryCluster(s) to go", delay=5)
