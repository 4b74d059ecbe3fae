"""A short `engram chaos --regions` run: it starts two linked regions, writes in both while a region
cut off from the other (and still taking writes), a frozen region, a killed journal leader and a
killed primary come one after the other, and finds the regions identical, by the last-writer-wins
rules, with nothing acknowledged lost.

Run it longer by hand: `engram chaos --regions east,west,south --duration 300 --interval 8`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# Seed 33 at a 6 s interval (region_faults.plan_region_faults): west cut off from 4 s to 8.5 s,
# east frozen from 10 s to 14.5 s, east's journal leader killed at 16 s and west's primary at 22 s,
# then 8 s of writes.
SEED = 33


@pytest.mark.timeout(150)
def test_a_short_multi_region_chaos_run_ends_converged_without_violations(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engram.chaos", "--json", "--regions", "east,west", "--duration", "30",
         "--interval", "6", "--seed", str(SEED)],
        capture_output=True, text=True, timeout=140, check=False, cwd=tmp_path,
    )
    assert done.stdout, f"engram chaos printed no report (exit {done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    context = f"exit {done.returncode}; report:\n{json.dumps(report, indent=2)[:8000]}\n{done.stderr[-3000:]}"

    assert (report["violation_count"], report["violations"]) == (0, []), context
    assert report["converged"] and set(report["digests"]) == {"east", "west"}, context
    assert [(f["kind"], f["region"]) for f in report["faults_injected"]] == [
        ("cut-region", "west"), ("freeze-region", "east"), ("kill-journal-leader", "east"),
        ("kill-primary", "west")], context
    assert all(f["writes_again_after"] is not None for f in report["faults_injected"]), context
    # The cut took effect and was healed, and both sides acknowledged writes alone meanwhile: what
    # they took then is part of what must have converged below.
    cut = report["faults_injected"][0]
    assert cut["complete"] and cut["detail"].startswith("cut east-west;"), context
    assert cut["until"] > cut["at"] and cut["linked_again_after"] is not None, context
    assert cut["acknowledged_meanwhile"]["west"] > 0 and cut["acknowledged_meanwhile"]["east"] > 0, context
    frozen = report["faults_injected"][1]
    assert frozen["complete"] and frozen["acknowledged_meanwhile"]["east"] == 0, context
    assert report["faults_skipped"] == [], context
    for region, figures in report["per_region"].items():
        assert figures["acknowledged"] >= 50, f"{region}: {context}"
    # The counter and the TTL string were written and checked too.
    assert report["counter"]["value"] >= report["counter"]["acknowledged"] > 0, context
    assert report["ttl"]["deadline"] > 0, context
    assert report["drain_seconds"] is not None and not report["not_drained"], context
    assert done.returncode == 0, context
