"""Pure manifest builders: a ClusterSpec (plus a placement decision) in, plain Kubernetes dicts out."""

from engram_operator.builders.disruption import build_journal_pdb, build_shard_pdb
from engram_operator.builders.engine import build_engine_pod, build_node_config, pod_spec_hash
from engram_operator.builders.journal import (
    build_journal_config,
    build_journal_statefulset,
    journal_server_configs,
    journal_urls,
)
from engram_operator.builders.network import OperatorPeer, build_network_policies
from engram_operator.builders.provision import build_provision_job
from engram_operator.builders.reshard import build_reshard_job
from engram_operator.builders.services import (
    build_endpoint_service,
    build_headless_service,
    build_journal_service,
)

__all__ = [
    "OperatorPeer",
    "build_endpoint_service",
    "build_engine_pod",
    "build_headless_service",
    "build_journal_config",
    "build_journal_pdb",
    "build_journal_service",
    "build_journal_statefulset",
    "build_network_policies",
    "build_node_config",
    "build_provision_job",
    "build_reshard_job",
    "build_shard_pdb",
    "journal_server_configs",
    "journal_urls",
    "pod_spec_hash",
]
