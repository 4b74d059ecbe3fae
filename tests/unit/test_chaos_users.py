"""The chaos users check: what it reports when a node lacks an acknowledged user."""

from __future__ import annotations

from engram.chaos.users import UserCheck


def test_a_missing_user_fails_the_check_and_is_named_with_its_node() -> None:
    fine = UserCheck(acknowledged=3, unknown=1, nodes=3)
    assert fine.ok and fine.summary().endswith("every node has every acknowledged user")
    bad = UserCheck(acknowledged=3, unknown=0, nodes=3, missing={"127.0.0.1:7001": ["run-user-2"]})
    assert not bad.ok
    assert "MISSING 127.0.0.1:7001: run-user-2" in bad.summary()
    assert bad.to_json()["missing"] == {"127.0.0.1:7001": ["run-user-2"]}
