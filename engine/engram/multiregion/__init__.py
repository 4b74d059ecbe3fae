"""Multi-region clusters: regional clusters linked active-active (docs/multi-region.md)."""
