"""engram bench's targets: engram-tls is an Engram cluster with a locked journal, asked for by name."""

from __future__ import annotations

import pytest

from engram.bench.runner import ALL_TARGETS, TARGETS, BenchConfig, make_target
from engram.bench.targets import EngramTarget


def test_engram_tls_is_a_locked_cluster_and_not_a_default_target() -> None:
    assert "engram-tls" in ALL_TARGETS and "engram-tls" not in TARGETS
    target = make_target("engram-tls", BenchConfig(targets=("valkey", "engram-tls")))
    assert isinstance(target, EngramTarget) and target.tls and target.name == "engram-tls"
    assert "TLS and passwords" in target.description
    plain = make_target("engram", BenchConfig(targets=("valkey", "engram")))
    assert isinstance(plain, EngramTarget) and not plain.tls and plain.name == "engram"


def test_an_unknown_target_is_refused_naming_every_known_one() -> None:
    with pytest.raises(ValueError, match="engram-tls"):
        BenchConfig(targets=("valkey", "engram-ssl"))
