"""Entry point: importing the handler modules registers them with kopf; then run the operator."""

from __future__ import annotations

import os

import kopf

from engram_operator import metrics
from engram_operator.handlers import handle_cluster, handle_delete, handle_multiregion, handle_startup

HANDLER_MODULES = (handle_startup, handle_cluster, handle_delete, handle_multiregion)


def main() -> None:
    """`python -m engram_operator`: all namespaces, or ENGRAM_WATCH_NAMESPACE, with kopf peering optional."""
    namespace = os.environ.get("ENGRAM_WATCH_NAMESPACE", "")
    peering = os.environ.get("ENGRAM_PEERING_NAME", "")
    metrics.serve_if_enabled()
    kopf.run(
        clusterwide=not namespace,
        namespaces=[namespace] if namespace else [],
        standalone=not peering,
        peering_name=peering or None,
        liveness_endpoint=os.environ.get("ENGRAM_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz"),
    )


if __name__ == "__main__":
    main()
