"""Operator-wide settings: annotations, finalizer and peering under engram.io."""

from __future__ import annotations

import os
from typing import Any

import kopf

from engram_operator import GROUP, kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    kube.load_config()
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # CRDs come from the chart before the operator starts; scanning for new ones would need
    # cluster-wide list/watch on CRDs and Namespaces, which least privilege leaves out.
    settings.scanning.disabled = True
    settings.posting.level = int(os.environ.get("ENGRAM_EVENT_LEVEL", "20"))  # INFO and above
    settings.watching.server_timeout = 300
