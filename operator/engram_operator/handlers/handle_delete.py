"""Deletion: engine pods stop before the journal goes; owner references remove everything else."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from engram_operator import GROUP, PLURAL, VERSION, kube
from engram_operator.observe import pod_from_api


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete_cluster(
    name: str, namespace: str, body: kopf.Body, logger: logging.Logger, **_: Any
) -> None:
    """Holds the engram.io finalizer until the engine pods are gone, then lets the GC take the rest."""
    pods = [p for p in map(pod_from_api, await kube.list_engine_pods(namespace, name)) if p]
    for pod in pods:
        if not pod.deleting:
            await kube.delete_pod(namespace, pod.name)
    if pods:
        kopf.info(body, reason="Deleting", message=f"stopping {len(pods)} engine pod(s)")
        raise kopf.TemporaryError(f"waiting for {len(pods)} engine pod(s) to stop", delay=3)
    logger.info("engine pods gone; the garbage collector removes the journal and services")
