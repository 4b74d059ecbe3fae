"""Records that one engine version writes and another reads (metadata, snapshot records)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def known_fields(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """raw's fields that the dataclass cls has: those a newer engine added are left out, so that a
    cluster being rolled still reads what its newer nodes wrote."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}
