"""The readiness probe's verdict from ENGRAM.STATUS fields."""

from __future__ import annotations

import pytest

from engram.node.peer import parse_status
from engram.node.probe import ready


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"role": "primary"}, True),
        ({"role": "replica", "halted": "", "lag": "3"}, True),
        ({"role": "replica", "halted": "", "lag": "5000"}, False),
        ({"role": "replica", "halted": "entry 9 was written by engine 9.0.0", "lag": "0"}, False),
        ({"role": "starting"}, False),
    ],
)
def test_ready_means_primary_or_a_caught_up_applying_replica(fields: dict[str, str], expected: bool) -> None:
    assert ready(fields, max_lag=1000)[0] is expected


def test_status_replies_parse_into_strings() -> None:
    assert parse_status([b"role", b"replica", b"lag", b"2"]) == {"role": "replica", "lag": "2"}
    with pytest.raises(ValueError, match="not a field/value array"):
        parse_status([b"odd"])
