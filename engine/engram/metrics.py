"""Prometheus metrics: what an operator of Engram watches."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from engram.node.certificate import ServerCertificate

COMMIT_LATENCY = Histogram(
    "engram_commit_latency_seconds",
    "Time from sending a journal append to its quorum acknowledgement",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
# Where a write's wait goes in the node, per journal entry of client writes (docs/data-path.md):
# batch: from the tap reading the entry's first byte to its append being handed to the journal
# client (waiting for a free slot of the append window); append: from then to the journal's reply
# being read; settle: from the reply to the REPLCONF ACK that releases the replies (in order).
COMMIT_STAGE = Histogram(
    "engram_commit_stage_seconds",
    "Time a journal entry of client writes spends in each stage of the primary's commit path",
    ["stage"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
             5.0),
)
COMMIT_PATH = Histogram(
    "engram_commit_path_seconds",
    "Time from the replication tap reading a journal entry's first byte to the acknowledgement that "
    "releases its replies (the sum of engram_commit_stage_seconds' stages, per entry)",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0,
             5.0),
)
COMMIT_STAGES = ("batch", "append", "settle")


class SampledHistogram(Collector):
    """A histogram kept outside this process (the Engram module's), exported as last sampled."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.buckets: list[tuple[str, float]] = [("+Inf", 0.0)]  # (upper bound, cumulative count)
        self.sum = 0.0
        REGISTRY.register(self)

    def update(self, buckets: list[tuple[str, float]], total: float) -> None:
        self.buckets, self.sum = buckets, total

    def collect(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, buckets=self.buckets, sum_value=self.sum)


REPLY_COMMIT_WAIT = SampledHistogram(
    "engram_reply_commit_wait_seconds",
    "Time a client's batch waited in the Engram module for its commit, from blocking to the acknowledgement "
    "that released it (ENGRAM.INFO, sampled every 5 s)",
)
APPLIED_SEQ = Gauge("engram_applied_sequence", "Last journal sequence applied or committed by this node")
COMMITTED_SEQ = Gauge("engram_committed_sequence", "Last journal sequence this primary committed")
REPLICATION_LAG = Gauge("engram_replication_lag_entries", "Journal entries not yet applied by this replica")
ROLE = Gauge("engram_role", "1 when this node is its shard's primary, else 0")
EPOCH = Gauge("engram_leader_epoch", "Leadership epoch this node has seen last")
FAILOVERS = Counter("engram_failovers_total", "Leadership changes this node took part in", ["kind"])
LEADERS_FOUND_GONE = Counter(
    "engram_leaders_found_gone_total",
    "Times this replica found its primary's process gone (its port refused) and campaigned without "
    "waiting out the lease",
)
REGION_APPLIED = Gauge("engram_region_applied_origin_sequence",
                       "Last entry of another region's shard journal this primary applied", ["region"])
REGION_PENDING = Gauge("engram_region_pending_entries",
                       "Entries of another region's shard journal not applied here yet (not copied, or "
                       "copied and not applied)", ["region"])
# From the origin's stamp on a write (its clock, microseconds of wall time, when the origin ran it,
# just before its journal committed it) to this region's journal committing it; clock stamps, sent
# every second, measure the link while no write comes. Skewed clocks shift it (negative: 0).
REGION_APPLY_LAG = Histogram(
    "engram_region_apply_lag_seconds",
    "Time from another region running a write (its stamp) to this region's journal committing it",
    ["region"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
REGION_TOMBSTONES_COLLECTED = Counter("engram_region_tombstones_collected_total",
                                      "Deleted keys whose stamps this primary forgot behind its frontier")
REGION_SOURCE_RESTARTS = Counter("engram_region_source_restarts_total",
                                 "Times a stalled copy from another region was restarted", ["region"])
REGION_GAP_ENTRIES_FILLED = Counter("engram_region_gap_entries_filled_total",
                                    "Entries of another region that the copy skipped and the applier "
                                    "read from that region's stream instead", ["region"])
REGION_APPLIER_STOPS = Counter("engram_region_applier_stops_total",
                               "Times an applier of another region's writes stopped on an error", ["region"])
STREAM_LEADER_MOVES = Counter("engram_stream_leader_moves_total",
                              "Times this primary moved its stream's journal leader out of its own zone")
USER_CHANGES = Counter("engram_user_changes_total",
                       "ACL user changes this node stored in the cluster's metadata")
SNAPSHOTS = Counter("engram_snapshots_total", "Snapshots this node took, by outcome", ["outcome"])
RESTORES = Counter("engram_snapshot_restores_total", "Times this node's Valkey was loaded from a snapshot")
HALTED = Gauge("engram_apply_halted", "1 when this replica stopped applying (see ENGRAM.STATUS)")
SNAPSHOT_AGE = Gauge("engram_snapshot_age_seconds",
                     "Seconds since the shard's newest verified snapshot was taken; NaN while it has none")
SNAPSHOT_INTERVAL = Gauge("engram_snapshot_interval_seconds",
                          "Seconds between this node's scheduled snapshots of its shard; 0: no schedule")
JOURNAL_ENTRIES = Gauge("engram_journal_entries", "Entries the shard's journal stream holds")
JOURNAL_BYTES = Gauge("engram_journal_bytes",
                      "Bytes the shard's journal stream holds, per copy (the journal keeps three)")
JOURNAL_REACHABLE = Gauge("engram_journal_reachable",
                          "1 while the shard's journal stream answers this node and has a leader (a quorum)")
TLS_RELOADS = Counter(
    "engram_tls_reloads_total",
    "Times this node loaded a changed certificate and key, by result (failed: the previous certificate "
    "is still served)",
    ["result"],
)

# Every label value exported from the start at 0: increase() and rate() take a series' first sample
# as its baseline, so a series that first appears already at 1 would hide that first failover.
for _kind in ("election", "switchover"):
    FAILOVERS.labels(_kind)
for _stage in COMMIT_STAGES:
    COMMIT_STAGE.labels(_stage)
for _outcome in ("ok", "failed"):
    SNAPSHOTS.labels(_outcome)
    TLS_RELOADS.labels(_outcome)


def serve(port: int | None, host: str = "0.0.0.0", certificate: ServerCertificate | None = None) -> None:
    """Serve the metrics on port (none when 0 or None); over TLS with the certificate when given."""
    if not port:
        return
    if certificate is None:
        start_http_server(port, addr=host)
        return
    server, _ = start_http_server(port, addr=host, certfile=certificate.files.cert_file,
                                  keyfile=certificate.files.key_file, tls_min_version=ssl.TLSVersion.TLSv1_2)
    # prometheus-client builds its own context: make it present the certificate as it is renewed.
    certificate.follow(server.socket.context)
    # Its listening socket would shake hands inside accept(), on the one thread that accepts: a
    # client that connects and says nothing would stall every scrape. Lazily, the handshake runs on
    # the first read, in the request's own thread.
    server.socket.do_handshake_on_connect = False
