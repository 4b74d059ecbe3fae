"""Chaos harness: record what clients saw, then check it against what a correct database allows."""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so `python -m engram.chaos.linearizability` does not find itself preloaded.
_EXPORTS = {
    "History": "history",
    "HistoryError": "history",
    "Kind": "history",
    "Operation": "history",
    "Outcome": "history",
    "Pending": "history",
    "CheckResult": "linearizability",
    "KeyResult": "linearizability",
    "Verdict": "linearizability",
    "check": "linearizability",
    "check_key": "linearizability",
    "LossReport": "loss",
    "LostWrite": "loss",
    "check_loss": "loss",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
