"""`engram chaos --seeds`: one run per seed, each on a fresh cluster, stopping at the first failure with
that run's evidence (cluster logs, journal, history, report) kept. A run's report is a ChaosReport, or
a RegionChaosReport with --regions: both have ok, to_json(), text(), history_path and evidence_dir."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram.binaries import BinaryNotFound
from engram.chaos.report import ChaosReport
from engram.chaos.runner import OWN_CLUSTER, ChaosError
from engram.chaos.workload import FinalReadFailed
from engram.platforms.local.cluster import LocalError

# A run that raises one of these could not be carried out (exit 2), as opposed to finding a problem.
RUN_ERRORS = (ChaosError, FinalReadFailed, LocalError, BinaryNotFound, ValueError)
REPORT_FILE = "report.json"

# Runs one seed with its cluster under the given directory; the runner keeps that cluster's evidence.
RunSeed = Callable[[int, Path], ChaosReport]


def parse_seeds(text: str) -> list[int]:
    """Seeds from a comma list and/or inclusive ranges: `4242,4243`, `100-104`, `1,5-7`."""
    seeds: list[int] = []
    seen: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"{text!r} has an empty item; give e.g. 4242,4243 or 100-104")
        first, dash, last = item.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ValueError(f"{item!r} is not a seed (an integer from 0) or a range like 100-104") from None
        if high < low:
            raise ValueError(f"the range {item!r} ends below its start")
        for seed in range(low, high + 1):
            if seed in seen:
                raise ValueError(f"seed {seed} is given twice")
            seen.add(seed)
            seeds.append(seed)
    return seeds


def evidence_dir(seed: int, given: str | None, several: bool) -> Path:
    """Where a run's evidence goes: the given DIR (DIR/<seed> when several runs' evidence is kept), else
    chaos-evidence-<seed> in the working directory."""
    if given is None:
        return Path.cwd() / f"chaos-evidence-{seed}"
    return Path(given) / str(seed) if several else Path(given)


def summarise(seed: int, report: ChaosReport | None, seconds: float, error: str | None = None,
              evidence: Path | None = None) -> dict[str, Any]:
    """The per-seed entry of the sweep's JSON (and its progress line); report may be partial with an error."""
    doc = report.to_json() if report is not None else {}
    return {
        "seed": seed,
        "ok": bool(error is None and report is not None and report.ok),
        "acknowledged_writes": doc.get("acknowledged_writes"),
        "lost_acknowledged_writes": doc.get("lost_acknowledged_writes"),
        "linearizable": doc.get("linearizable"),
        # A multi-region run (--regions) checks convergence instead of linearizability.
        "violations": doc.get("violation_count"),
        "faults": len(doc.get("faults_injected", ())),
        "failovers": len(doc.get("failovers", ())),
        "seconds": round(seconds, 1),
        "error": error,
        "evidence": None if evidence is None else str(evidence),
    }


def summary_line(run: dict[str, Any]) -> str:
    """One progress line per seed."""
    kept = f"; evidence in {run['evidence']}" if run["evidence"] else ""
    if run["error"] is not None:
        return (f"seed {run['seed']}: could not run ({run['error']}) after {run['faults']} faults, "
                f"{run['failovers']} failovers, {run['seconds']:g}s{kept}")
    if run.get("violations") is not None:
        # A multi-region report counts no failovers of its own: its faults say what happened.
        checked, failovers = f"{run['violations']} violations", ""
    else:
        checked = f"linearizable {'yes' if run['linearizable'] else 'NO'}"
        failovers = f"{run['failovers']} failovers, "
    return (f"seed {run['seed']}: {'ok' if run['ok'] else 'FAILED'}, "
            f"{run['acknowledged_writes']} acknowledged writes, {run['lost_acknowledged_writes']} lost, "
            f"{checked}, {run['faults']} faults, {failovers}{run['seconds']:g}s{kept}")


@dataclass
class SweepResult:
    """What `engram chaos --seeds` prints; exit code 0 all passed, 1 a seed failed, 2 one could not run."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    failed_seed: int | None = None
    evidence: str | None = None
    error: str | None = None
    # The failing run's report, printed in full as text.
    failed_report: ChaosReport | None = None

    @property
    def ok(self) -> bool:
        return self.failed_seed is None and self.error is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 2 if self.error is not None else 1

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "runs": self.runs, "failed_seed": self.failed_seed,
                "evidence": self.evidence, "error": self.error}

    def text(self) -> str:
        lines = [self.failed_report.text(), ""] if self.failed_report is not None else []
        passed = sum(1 for r in self.runs if r["ok"])
        if self.ok:
            lines.append(f"all {passed} seeds passed" if passed != 1 else "the seed passed")
        else:
            what = f"could not be run ({self.error})" if self.error is not None else "failed"
            plural = "" if passed == 1 else "s"
            lines.append(f"seed {self.failed_seed} {what} after {passed} passing seed{plural}")
        if self.evidence:
            lines.append(f"evidence (cluster logs, journal, history, report) in {self.evidence}")
        return "\n".join(lines)


def check_evidence_free(seeds: list[int], given: str | None, keep_evidence: bool) -> None:
    """Refuse, before anything runs, to put evidence where something already is."""
    several = keep_evidence and len(seeds) > 1
    for seed in seeds:
        target = evidence_dir(seed, given, several)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ValueError(f"the evidence directory {target} already exists; remove it or give --evidence")


def sweep(seeds: list[int], run_seed: RunSeed, given: str | None, keep_evidence: bool,
          progress: Callable[[str], None]) -> SweepResult:
    """Run the seeds in turn; stop at the first that fails or cannot run, with its evidence kept."""
    several = keep_evidence and len(seeds) > 1
    result = SweepResult()
    for seed in seeds:
        base = Path(tempfile.mkdtemp(prefix=f"eg-chaos-{seed}-", dir="/tmp"))
        began = time.monotonic()
        report: ChaosReport | None = None
        error: str | None = None
        try:
            report = run_seed(seed, base)
        except (*RUN_ERRORS, KeyboardInterrupt) as exc:  # keep an interrupted run's evidence too
            error = str(exc) or type(exc).__name__
            report = exc.report if isinstance(exc, ChaosError) else None  # what the run got to
        seconds = time.monotonic() - began
        failed = error is not None or report is None or not report.ok
        evidence = None
        if failed or keep_evidence:
            evidence = _keep(base / OWN_CLUSTER, evidence_dir(seed, given, several), report, error)
        shutil.rmtree(base, ignore_errors=True)
        run = summarise(seed, report, seconds, error, evidence)
        result.runs.append(run)
        progress(summary_line(run))
        if failed:
            result.failed_seed, result.error, result.failed_report = seed, error, report
            result.evidence = None if evidence is None else str(evidence)
            break
    return result


def _keep(cluster_dir: Path, target: Path, report: ChaosReport | None, error: str | None) -> Path | None:
    """Move a run's cluster directory to target and write its report there; None if there is none."""
    if not cluster_dir.is_dir():
        return None  # the run failed before it made a cluster: nothing to keep
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        target.rmdir()  # check_evidence_free let only an empty one through
    try:
        os.rename(cluster_dir, target)
    except OSError:  # another filesystem: copy what can be copied (not the nodes' unix sockets)
        shutil.copytree(cluster_dir, target, ignore=_special_files)
        shutil.rmtree(cluster_dir, ignore_errors=True)
    if report is not None:
        if report.history_path and Path(report.history_path).is_relative_to(cluster_dir):
            report.history_path = str(target / Path(report.history_path).relative_to(cluster_dir))
        report.evidence_dir = str(target)
        (target / REPORT_FILE).write_text(json.dumps({**report.to_json(), "error": error}, indent=2))
    return target


def _special_files(directory: str, names: list[str]) -> list[str]:
    """Names copytree must skip: sockets and pipes, which cannot be copied (and are dead evidence)."""
    kinds = (stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK)
    return [n for n in names if not any(k(os.lstat(os.path.join(directory, n)).st_mode) for k in kinds)]
