"""Additive counters, opt-in by key pattern (docs/multi-region.md, "Additive counters"): the module
argument `counters <glob>` makes INCR, DECR, INCRBY and DECRBY on matching keys replicate as
increments that every region adds up (lww.counter_value)."""

from __future__ import annotations

from collections.abc import Sequence

MAX_PATTERNS = 64  # the module's limit (engine/module/counter.c)
MAX_PATTERN_LENGTH = 200


def counter_pattern_problems(patterns: Sequence[str]) -> list[str]:
    """Why these key patterns cannot be given to the module; empty when they can."""
    problems = []
    if len(patterns) > MAX_PATTERNS:
        problems.append(f"at most {MAX_PATTERNS} counter patterns, got {len(patterns)}")
    for pattern in patterns:
        if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
            problems.append(f"a counter pattern has 1 to {MAX_PATTERN_LENGTH} characters, got {pattern!r}")
        elif any(c.isspace() or not c.isprintable() for c in pattern):
            problems.append(f"a counter pattern has no spaces or control characters, got {pattern!r}")
    if len(set(patterns)) != len(patterns):
        problems.append("a counter pattern is given twice")
    return problems
