"""A writer running in the client pod the whole time a test disturbs the cluster.

It overwrites a set of keys through the configuration endpoint with a stock cluster client
(clients/rewriter.py) and logs every acknowledged write; at the end every key must read back with
its last acknowledged value (clients/verify_last.py), and the longest pause between two
acknowledged writes is reported.
"""

from __future__ import annotations

import json
from typing import Any

from k8s_api import Kubectl, endpoint, eventually

# Bounds the writer should the test die before it stops it.
WRITER_SECONDS = 3600


class BackgroundWriter:
    """clients/rewriter.py under nohup in the client pod, with its files named for ``prefix``."""

    def __init__(self, kube: Kubectl, pod: str, cluster: str, prefix: str) -> None:
        self.kube, self.pod, self.host, self.prefix = kube, pod, endpoint(kube, cluster), prefix
        self.stop_file = f"/tmp/{prefix}.stop"
        self.acked_file = f"/tmp/{prefix}.acked"
        self.errors_file = f"/tmp/{prefix}.err"

    def start(self, first: int = 100) -> None:
        """Start writing and wait for the first ``first`` acknowledged writes."""
        self.kube.exec(self.pod, "rm", "-f", self.stop_file, f"{self.stop_file}.done", self.acked_file)
        self.kube.exec(
            self.pod,
            "sh",
            "-c",
            f"nohup python /tmp/rewriter.py {self.host} {WRITER_SECONDS} {self.prefix} {self.stop_file} "
            f"> {self.acked_file} 2> {self.errors_file} &",
        )
        self.wait_for_more(0, first, "the writer's first acknowledged writes")

    def acknowledged(self) -> int:
        """Writes logged as acknowledged so far (the "?" line of an unanswered last write is not one)."""
        out = self.kube.exec(self.pod, "sh", "-c", f"grep -vc '^?' {self.acked_file} || true")
        return int(out.strip() or 0)

    def wait_for_more(self, than: int, more: int = 50, what: str = "", timeout: float = 120) -> int:
        """Wait until ``more`` writes beyond ``than`` were acknowledged: the cluster takes writes now."""
        return eventually(
            self.kube,
            what or f"{more} more acknowledged writes than {than}",
            self.acknowledged,
            lambda n: n >= than + more,
            timeout=timeout,
        )

    def errors(self, lines: int = 20) -> str:
        return self.kube.exec(self.pod, "tail", f"-{lines}", self.errors_file)

    def stop(self) -> dict[str, Any]:
        """Stop the writer; returns its summary: {"acknowledged", "longest_gap_seconds", "errors"}."""
        self.kube.exec(self.pod, "touch", self.stop_file)
        eventually(
            self.kube,
            "the writer stopped",
            lambda: self.kube.exec(
                self.pod, "sh", "-c", f"test -e {self.stop_file}.done && echo yes || echo no"
            ).strip(),
            lambda said: said == "yes",
            timeout=60,
        )
        return json.loads(self.kube.exec(self.pod, "cat", f"{self.stop_file}.done"))

    def lost(self) -> str:
        """Read every key back; verify_last.py's report, "checked N lost M" and the keys lost."""
        acked = self.kube.exec(self.pod, "cat", self.acked_file)
        return self.kube.exec(self.pod, "python", "/tmp/verify_last.py", self.host, stdin=acked)

    def stop_and_verify(self, min_writes: int = 500) -> dict[str, Any]:
        """Stop, check that every acknowledged write reads back, and print the summary for the log."""
        summary = self.stop()
        assert summary["acknowledged"] >= min_writes, (summary, self.errors())
        result = self.lost()
        print(
            f"writer {self.prefix}: {summary['acknowledged']} acknowledged writes, "
            f"{summary['errors']} errors, longest pause between two acknowledged writes "
            f"{summary['longest_gap_seconds']:.2f}s; {result.splitlines()[0] if result else result}"
        )
        assert result.startswith("checked") and " lost 0" in result, result
        return summary
