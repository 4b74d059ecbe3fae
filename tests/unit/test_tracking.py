"""Key-level tracking of uncommitted writes."""

from __future__ import annotations

from engram.frontdoor.tracking import PendingWrites, WriteGroup


def test_a_read_waits_only_for_groups_writing_its_keys() -> None:
    pending = PendingWrites()
    a, b = WriteGroup(), WriteGroup()
    pending.register(a, [b"x"])
    pending.register(b, [b"y"])
    assert pending.blocking([b"x"]) == [a]
    assert pending.blocking([b"z"]) == []
    assert set(pending.blocking(None)) == {a, b}


def test_writes_with_unknown_keys_hold_every_read() -> None:
    pending = PendingWrites()
    script = WriteGroup()
    pending.register(script, None)
    assert pending.blocking([b"anything"]) == [script]


def test_resolving_a_group_releases_its_waiters_once() -> None:
    pending = PendingWrites()
    group = WriteGroup()
    pending.register(group, [b"k", b"k2"])
    calls = []
    group.on_done(lambda: calls.append(group.committed))
    pending.resolve(group, committed=True)
    pending.resolve(group, committed=False)
    assert calls == [True]
    assert pending.blocking([b"k"]) == [] and len(pending) == 0
    late = []
    group.on_done(lambda: late.append(True))
    assert late == [True]


def test_resolve_all_marks_every_group_not_committed() -> None:
    pending = PendingWrites()
    groups = [WriteGroup() for _ in range(3)]
    for i, group in enumerate(groups):
        pending.register(group, [b"k%d" % i])
    pending.resolve_all(committed=False)
    assert all(g.done and not g.committed for g in groups)
    assert len(pending) == 0
