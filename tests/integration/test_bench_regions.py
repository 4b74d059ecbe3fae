"""`engram bench-regions`' measuring loop against real valkey-servers: every key written is seen by
every reader, and the report names each destination with ratios to Valkey's figures."""

from __future__ import annotations

import pytest

from engram.bench.regions import Lag, ValkeyReplication, measure, report

pytestmark = pytest.mark.integration


def test_every_key_written_to_the_primary_is_seen_on_each_replica_with_its_lag() -> None:
    valkey = ValkeyReplication(2)
    try:
        lags = measure(valkey.primary, {"west": valkey.replicas[0], "south": valkey.replicas[1]}, 500, 200,
                       "t")
    finally:
        valkey.stop()
    assert set(lags) == {"west", "south"}
    for values in lags.values():
        assert len(values) == 200
        # Seen after it was acknowledged, up to one poll and a round trip early; never seconds late.
        assert all(-0.05 < v < 5 for v in values), values


def test_the_report_gives_engrams_figures_as_ratios_of_valkeys_for_the_same_destination_and_rate() -> None:
    rows = [Lag("valkey", "east", "west", 200, 10, 10, 1.0, 2.0, 3.0),
            Lag("engram", "east", "west", 200, 10, 10, 30.0, 100.0, 120.0),
            Lag("engram", "east", "south", 1000, 10, 10, 30.0, 100.0, 120.0)]
    lines = report(rows).splitlines()
    assert lines[2].split()[-2:] == ["30.0x", "50.0x"]
    assert lines[3].split()[-2:] == ["-", "-"]  # no Valkey figure at that rate to compare with
