"""Key patterns of multi-region keys that replicate beyond last-writer-wins (docs/multi-region.md):
`counters` (additive counters: INCR, DECR, INCRBY and DECRBY add up across regions) and `ttls`
(converging TTLs: a string's TTL is part of its value). Each becomes a module argument per pattern.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_PATTERNS = 64  # the module's limit (engine/module/patterns.c)
MAX_PATTERN_LENGTH = 200


def key_pattern_problems(patterns: Sequence[str]) -> list[str]:
    """Why these key patterns cannot be given to the module; empty when they can."""
    problems = []
    if len(patterns) > MAX_PATTERNS:
        problems.append(f"at most {MAX_PATTERNS} patterns, got {len(patterns)}")
    for pattern in patterns:
        if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
            problems.append(f"a pattern has 1 to {MAX_PATTERN_LENGTH} characters, got {pattern!r}")
        elif any(c.isspace() or not c.isprintable() for c in pattern):
            problems.append(f"a pattern has no spaces or control characters, got {pattern!r}")
    if len(set(patterns)) != len(patterns):
        problems.append("a pattern is given twice")
    return problems
