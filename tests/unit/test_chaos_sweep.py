"""`engram chaos --seeds`: seed parsing, where evidence goes, and the stop-at-first-failure loop (with a
fake run in place of a cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engram.chaos.history import History
from engram.chaos.linearizability import CheckResult, Verdict
from engram.chaos.loss import LossReport
from engram.chaos.report import ChaosReport
from engram.chaos.runner import OWN_CLUSTER, ChaosError
from engram.chaos.sweep import (
    REPORT_FILE,
    SweepResult,
    check_evidence_free,
    evidence_dir,
    parse_seeds,
    summarise,
    summary_line,
    sweep,
)


@pytest.mark.parametrize(("text", "seeds"), [
    ("4242", [4242]),
    ("4242,4243,4244", [4242, 4243, 4244]),
    ("100-104", [100, 101, 102, 103, 104]),
    (" 1, 5-7 ,0", [1, 5, 6, 7, 0]),
    ("3-3", [3]),
])
def test_seeds_are_a_comma_list_or_ranges(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty item"),
    ("1,,2", "empty item"),
    ("abc", "'abc' is not a seed"),
    ("1.5", "'1.5' is not a seed"),
    ("-3", "'-3' is not a seed"),
    ("3-", "'3-' is not a seed"),
    ("1-2-3", "'1-2-3' is not a seed"),
    ("104-100", "the range '104-100' ends below its start"),
    ("1,2,1", "seed 1 is given twice"),
    ("1-5,3", "seed 3 is given twice"),
])
def test_bad_seeds_are_refused_saying_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_seeds(text)


def test_evidence_goes_to_the_given_dir_or_one_per_seed_in_the_working_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert evidence_dir(7, None, several=False) == tmp_path / "chaos-evidence-7"
    assert evidence_dir(7, None, several=True) == tmp_path / "chaos-evidence-7"
    assert evidence_dir(7, "/x/ev", several=False) == Path("/x/ev")
    assert evidence_dir(7, "/x/ev", several=True) == Path("/x/ev/7")


def test_existing_evidence_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "ev").mkdir()
    check_evidence_free([1, 2], str(tmp_path / "ev"), keep_evidence=False)  # empty: fine
    (tmp_path / "ev" / "old.log").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        check_evidence_free([1, 2], str(tmp_path / "ev"), keep_evidence=False)
    (tmp_path / "many" / "2").mkdir(parents=True)
    (tmp_path / "many" / "2" / "old.log").write_text("x")
    with pytest.raises(ValueError, match="many/2 already exists"):
        check_evidence_free([1, 2, 3], str(tmp_path / "many"), keep_evidence=True)


def _report(ok: bool, acknowledged: int = 100) -> ChaosReport:
    report = ChaosReport(started=0, duration=20, settings={}, history=History())
    report.loss = LossReport(acknowledged=acknowledged)
    verdict = Verdict.LINEARIZABLE if ok else Verdict.NOT_LINEARIZABLE
    report.linearizability = CheckResult(verdict, {}, 0.0)
    return report


def test_a_summary_line_names_seed_writes_loss_linearizability_and_failovers() -> None:
    line = summary_line(summarise(4242, _report(True, 1234), 21.04))
    assert line == ("seed 4242: ok, 1234 acknowledged writes, 0 lost, linearizable yes, 0 faults, "
                    "0 failovers, 21s")
    assert "FAILED" in summary_line(summarise(1, _report(False), 1.0))
    assert summary_line(summarise(1, None, 3.0, error="no nats-server", evidence=Path("/ev"))) == (
        "seed 1: could not run (no nats-server) after 0 faults, 0 failovers, 3s; evidence in /ev")


UNRECOVERED = "unrecovered"


class FakeRuns:
    """Stands in for runner.run: makes the cluster directory a kept run leaves, with a log and a history."""

    def __init__(self, outcomes: dict[int, bool | str | Exception]) -> None:
        self.outcomes = outcomes
        self.ran: list[int] = []

    def __call__(self, seed: int, base: Path) -> ChaosReport:
        self.ran.append(seed)
        cluster = base / OWN_CLUSTER
        (cluster / "logs").mkdir(parents=True)
        (cluster / "logs" / "supervisor.log").write_text(f"seed {seed}\n")
        outcome = self.outcomes.get(seed, True)
        if isinstance(outcome, Exception):
            raise outcome
        report = _report(outcome is True)
        history = cluster / f"chaos-history-{seed}.json"
        history.write_text("{}")
        report.history_path, report.evidence_dir = str(history), str(cluster)
        if outcome == UNRECOVERED:  # as the runner does when the final read fails
            report.loss = report.linearizability = None
            raise ChaosError("3 keys could not be read after the run", report)
        return report


def test_all_seeds_passing_leave_no_evidence(tmp_path: Path) -> None:
    runs = FakeRuns({})
    lines: list[str] = []
    result = sweep([1, 2, 3], runs, str(tmp_path / "ev"), False, lines.append)
    assert runs.ran == [1, 2, 3]
    assert (result.ok, result.exit_code, result.failed_seed, result.evidence) == (True, 0, None, None)
    assert [r["seed"] for r in result.runs] == [1, 2, 3] and len(lines) == 3
    assert not (tmp_path / "ev").exists()


def test_the_sweep_stops_at_the_first_failure_and_keeps_its_evidence(tmp_path: Path) -> None:
    runs = FakeRuns({2: False})
    result = sweep([1, 2, 3], runs, str(tmp_path / "ev"), False, lambda _: None)
    assert runs.ran == [1, 2]
    assert (result.ok, result.exit_code, result.failed_seed) == (False, 1, 2)
    assert result.evidence == str(tmp_path / "ev")
    assert (tmp_path / "ev" / "logs" / "supervisor.log").read_text() == "seed 2\n"
    report = json.loads((tmp_path / "ev" / REPORT_FILE).read_text())
    # The report points at where the history and logs are now, not at the removed temporary cluster.
    assert report["history"] == str(tmp_path / "ev" / "chaos-history-2.json")
    assert report["evidence"] == str(tmp_path / "ev")
    assert Path(report["history"]).exists()
    assert result.to_json() == {"ok": False, "runs": result.runs, "failed_seed": 2,
                                "evidence": str(tmp_path / "ev"), "error": None}
    assert "seed 2 failed after 1 passing seed\n" in result.text()


def test_keep_evidence_keeps_every_seed_in_its_own_directory(tmp_path: Path) -> None:
    result = sweep([5, 6], FakeRuns({}), str(tmp_path / "ev"), True, lambda _: None)
    assert result.ok
    assert [r["evidence"] for r in result.runs] == [str(tmp_path / "ev" / "5"), str(tmp_path / "ev" / "6")]
    assert (tmp_path / "ev" / "6" / REPORT_FILE).exists()


def test_a_run_that_cannot_be_carried_out_stops_the_sweep_with_exit_2_and_its_logs(tmp_path: Path) -> None:
    runs = FakeRuns({1: ChaosError("fault injection failed")})
    result = sweep([1, 2], runs, str(tmp_path / "ev"), False, lambda _: None)
    assert runs.ran == [1]
    assert (result.exit_code, result.failed_seed, result.error) == (2, 1, "fault injection failed")
    assert (tmp_path / "ev" / "logs" / "supervisor.log").exists()
    assert not (tmp_path / "ev" / REPORT_FILE).exists()  # there is no report to write


def test_an_empty_result_is_a_pass() -> None:
    assert SweepResult().exit_code == 0


def test_a_cluster_that_never_recovered_keeps_its_history_and_partial_report(tmp_path: Path) -> None:
    result = sweep([1, 2], FakeRuns({1: UNRECOVERED}), str(tmp_path / "ev"), False, lambda _: None)
    assert (result.exit_code, result.failed_seed) == (2, 1)
    assert result.runs[0]["error"] == "3 keys could not be read after the run"
    report = json.loads((tmp_path / "ev" / REPORT_FILE).read_text())
    assert report["error"] == "3 keys could not be read after the run"
    assert report["history"] == str(tmp_path / "ev" / "chaos-history-1.json")
    assert "could not be run (3 keys could not be read after the run)" in result.text()
