"""Engram: a durable, memory-first database built on Valkey and a replicated journal."""

__version__ = "0.1.0"

# Entries in the journal carry this number; a node refuses to apply entries from a newer one.
ENGINE_VERSION = (0, 1, 0)
