"""The chaos fault schedule: faults never overlap, end before the cooldown, and intervals down to the
minimum work (`--fault-interval 4` must, below 2 s is refused)."""

from __future__ import annotations

import argparse
import itertools

import pytest

from engram.chaos.cli import add_parser
from engram.chaos.faults import ALL_KINDS, MIN_FAULT_INTERVAL, FaultKind, Planned, default_hold, schedule
from engram.chaos.runner import ChaosConfig

HELD = (FaultKind.PAUSE_PRIMARY, FaultKind.PARTITION_ZONE)


def _assert_sane(plan: list[Planned], duration: float, cooldown: float) -> None:
    for planned, following in itertools.pairwise(plan):
        assert planned.until < following.at, f"{planned} overlaps {following}"
    assert all(p.until <= duration - cooldown for p in plan)


@pytest.mark.parametrize("interval", [MIN_FAULT_INTERVAL, 3.0, 4.0, 4.5, 6.0, 12.0])
@pytest.mark.parametrize("lease", [1.0, 2.0, 5.0])
def test_faults_never_overlap_and_end_before_the_cooldown(interval: float, lease: float) -> None:
    plan = schedule(120.0, ALL_KINDS, interval, warmup=4.0, cooldown=8.0, lease=lease)
    assert plan
    _assert_sane(plan, 120.0, 8.0)


def test_at_4s_intervals_pauses_and_partitions_are_shortened_to_fit() -> None:
    plan = schedule(60.0, ALL_KINDS, 4.0, warmup=4.0, cooldown=8.0, lease=2.0)
    # The 13th, a pause at 52 s, would still be held when the last 8 s begin: the plan stops before it.
    assert [p.at for p in plan] == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48]
    assert [p.kind for p in plan[: len(ALL_KINDS)]] == list(ALL_KINDS)
    assert all(p.hold == 3.0 for p in plan if p.kind in HELD)
    assert all(p.hold == 0 for p in plan if p.kind not in HELD)
    _assert_sane(plan, 60.0, 8.0)


def test_long_intervals_keep_holds_beyond_the_lease() -> None:
    plan = schedule(66.0, ALL_KINDS, 11.0, warmup=4.0, cooldown=8.0, lease=2.0)
    holds = {p.kind: p.hold for p in plan}
    assert holds[FaultKind.PAUSE_PRIMARY] == default_hold(FaultKind.PAUSE_PRIMARY, 2.0) == 5.0
    assert holds[FaultKind.PARTITION_ZONE] == default_hold(FaultKind.PARTITION_ZONE, 2.0) == 7.0
    assert [p.at for p in plan] == [4, 15, 26, 37, 48]


def test_a_held_fault_that_would_run_into_the_cooldown_is_not_planned() -> None:
    # The partition's slot at 52 s would last until 59 s, leaving no time to see it recover.
    plan = schedule(60.0, ALL_KINDS, 12.0, warmup=4.0, cooldown=8.0, lease=2.0)
    assert [(p.at, p.kind) for p in plan] == [(4, FaultKind.KILL_PRIMARY), (16, FaultKind.KILL_REPLICA),
                                              (28, FaultKind.KILL_JOURNAL), (40, FaultKind.PAUSE_PRIMARY)]


def test_no_kinds_or_no_room_means_no_faults() -> None:
    assert schedule(60.0, (), 4.0, 4.0, 8.0, 2.0) == []
    assert schedule(10.0, ALL_KINDS, 4.0, 4.0, 8.0, 2.0) == []


def test_intervals_below_the_minimum_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2s"):
        schedule(60.0, ALL_KINDS, 1.5, 4.0, 8.0, 2.0)
    with pytest.raises(ValueError, match="at least 2s"):
        ChaosConfig(fault_interval=1.9)
    assert ChaosConfig(fault_interval=4.0).fault_interval == 4.0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="engram")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["chaos", *argv])


def test_the_cli_takes_4s_and_refuses_below_2s_naming_the_flag_and_minimum(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert _parse(["--fault-interval", "4"]).fault_interval == 4.0
    for bad in ("1.5", "nan", "soon"):
        with pytest.raises(SystemExit) as exited:
            _parse(["--fault-interval", bad])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "argument --fault-interval" in err
    with pytest.raises(SystemExit):
        _parse(["--fault-interval", "1"])
    assert "must be at least 2 seconds" in capsys.readouterr().err


def test_the_cli_refuses_bad_seeds_and_seed_with_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert _parse(["--seeds", "100-102"]).seeds == [100, 101, 102]
    with pytest.raises(SystemExit):
        _parse(["--seeds", "9-1"])
    assert "argument --seeds: the range '9-1' ends below its start" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--seeds", "1,2", "--seed", "3"])
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "1,2", "--name", "demo", "--dir", "/tmp/x"], "drop --name, --dir"),
    (["--seeds", "1", "--history", "h.json"], "drop --history"),
    (["--evidence", "ev"], "go with --seeds"),
    (["--keep-evidence"], "go with --seeds"),
])
def test_sweep_options_that_cannot_work_are_refused_before_anything_runs(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(argv)
    assert args.func(args) == 2
    assert message in capsys.readouterr().err
