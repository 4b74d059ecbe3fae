"""The multi-region conflict rules (engram.multiregion.lww): MemoryDB's documented examples, and
convergence whatever order the regions apply the same writes in."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from engram.multiregion.hlc import Hlc
from engram.multiregion.lww import KeyState, Kind, Stamp, Store, Write, frontier, resolve, resolve_deadline

K = b"k"


def at(hlc: int, region: str = "eu") -> Stamp:
    return Stamp(hlc, region)


def string(stamp: Stamp, value: bytes, key: bytes = K) -> Write:
    return Write(key, stamp, Kind.STRING, value=value)


def incr(stamp: Stamp, delta: int, key: bytes = K) -> Write:
    return Write(key, stamp, Kind.STRING, delta=delta)


def delete(stamp: Stamp, key: bytes = K) -> Write:
    return Write(key, stamp, Kind.NONE)


def hset(stamp: Stamp, **fields: str) -> Write:
    return Write(K, stamp, Kind.HASH, put={f.encode(): v.encode() for f, v in fields.items()})


def hdel(stamp: Stamp, *names: str) -> Write:
    return Write(K, stamp, Kind.HASH, remove=frozenset(n.encode() for n in names))


def sadd(stamp: Stamp, *members: str) -> Write:
    return Write(K, stamp, Kind.SET, put={m.encode(): b"" for m in members})


def srem(stamp: Stamp, *members: str) -> Write:
    return Write(K, stamp, Kind.SET, remove=frozenset(m.encode() for m in members))


def zadd(stamp: Stamp, **scores: float) -> Write:
    return Write(K, stamp, Kind.ZSET, put={m.encode(): s for m, s in scores.items()})


def every_order(writes: list[Write]) -> set[object]:
    """What the key holds after the writes in each of a few dozen orders, and from scratch."""
    seen = {_frozen(resolve(writes))}
    rng = random.Random(7)
    for _ in range(40):
        order = writes[:]
        rng.shuffle(order)
        state = KeyState()
        for write in order:
            state.apply(write)
        seen.add(_frozen(state.visible()))
    return seen


def _frozen(visible: object) -> object:
    if visible is None:
        return None
    kind, value = visible  # type: ignore[misc]
    return (kind, tuple(sorted(value.items())) if isinstance(value, dict) else value)


def only(writes: list[Write]) -> object:
    outcomes = every_order(writes)
    assert len(outcomes) == 1, f"the order of application changed the outcome: {outcomes}"
    return outcomes.pop()


# MemoryDB Multi-Region's documented behaviours, each as a concrete history.

def test_concurrent_writes_of_different_fields_both_survive() -> None:
    assert only([hset(at(10, "eu"), a="1"), hset(at(10, "us"), b="2")]) == (
        Kind.HASH, ((b"a", b"1"), (b"b", b"2")))


def test_concurrent_writes_of_the_same_field_keep_the_later_one() -> None:
    assert only([hset(at(11, "eu"), a="eu"), hset(at(12, "us"), a="us")]) == (Kind.HASH, ((b"a", b"us"),))


def test_a_tie_between_regions_goes_to_the_greater_region_name() -> None:
    assert only([string(at(5, "ap"), b"ap"), string(at(5, "us"), b"us"), string(at(5, "eu"), b"eu")]) == (
        Kind.STRING, b"us")


def test_a_string_then_a_hash_from_another_region_leaves_the_hash() -> None:
    assert only([string(at(1, "eu"), b"s"), hset(at(2, "us"), f="v")]) == (Kind.HASH, ((b"f", b"v"),))


def test_a_type_change_drops_the_older_types_fields_even_when_they_arrive_late() -> None:
    writes = [hset(at(1, "eu"), old="1"), string(at(2, "us"), b"s"), hset(at(3, "ap"), new="3")]
    assert only(writes) == (Kind.HASH, ((b"new", b"3"),))


def test_del_then_a_concurrent_sadd_leaves_a_set_with_only_the_new_member() -> None:
    writes = [sadd(at(1, "eu"), "old"), delete(at(5, "eu")), sadd(at(6, "us"), "new")]
    assert only(writes) == (Kind.SET, frozenset({b"new"}))


def test_sadd_then_del_leaves_the_key_deleted() -> None:
    assert only([sadd(at(5, "us"), "m"), delete(at(6, "eu"))]) is None


def test_a_removal_newer_than_the_add_wins_and_an_older_one_loses() -> None:
    assert only([sadd(at(1), "a", "b"), srem(at(2, "us"), "a"), sadd(at(3, "ap"), "c")]) == (
        Kind.SET, frozenset({b"b", b"c"}))
    assert only([srem(at(1, "us"), "a"), sadd(at(2), "a")]) == (Kind.SET, frozenset({b"a"}))


def test_removing_every_member_leaves_the_key_absent_as_valkey_does() -> None:
    assert only([hset(at(1), a="1"), hdel(at(2, "us"), "a")]) is None


def test_concurrent_counters_converge_to_one_of_the_full_values() -> None:
    # INCRBY replicates the value it left: 10 + 5 in one region, 10 + 7 in the other.
    writes = [string(at(1), b"10"), string(at(20, "eu"), b"15"), string(at(20, "us"), b"17")]
    assert only(writes) == (Kind.STRING, b"17")


# Additive counters (opt-in by key pattern): increments from every region add up.

def test_concurrent_increments_of_an_additive_counter_both_count() -> None:
    writes = [string(at(1), b"10"), incr(at(20, "eu"), 5), incr(at(20, "us"), 7)]
    assert only(writes) == (Kind.STRING, b"22")


def test_a_set_discards_the_increments_before_it_and_keeps_those_after() -> None:
    writes = [incr(at(5, "eu"), 5), string(at(10, "us"), b"100"), incr(at(12, "eu"), 1),
              incr(at(9, "ap"), 40)]
    assert only(writes) == (Kind.STRING, b"101")


def test_a_delete_restarts_the_count_and_an_increment_before_it_is_gone() -> None:
    assert only([string(at(1), b"50"), delete(at(10, "us")), incr(at(11, "eu"), 3)]) == (Kind.STRING, b"3")
    assert only([incr(at(9, "eu"), 3), delete(at(10, "us"))]) is None


def test_a_value_that_is_not_an_integer_ignores_increments_after_it() -> None:
    assert only([string(at(10, "us"), b"abc"), incr(at(11, "eu"), 1)]) == (Kind.STRING, b"abc")
    # Written as INCR never writes an integer: leading zeros, a signed zero.
    assert only([string(at(10, "us"), b"007"), incr(at(11, "eu"), 1)]) == (Kind.STRING, b"007")
    assert only([string(at(10, "us"), b"-0"), incr(at(11, "eu"), 1)]) == (Kind.STRING, b"-0")


def test_an_increment_after_a_hash_makes_a_counter_from_zero() -> None:
    assert only([hset(at(1), a="1"), incr(at(2, "us"), -4)]) == (Kind.STRING, b"-4")


def test_counts_beyond_a_64_bit_integer_are_kept_exactly() -> None:
    writes = [string(at(1), str(2**63 - 1).encode()), incr(at(2, "eu"), 2**63 - 1), incr(at(2, "us"), 2)]
    assert only(writes) == (Kind.STRING, str(2**64).encode())


# Converging TTLs (opt-in by key pattern): a string's deadline is part of its value.

def test_a_strings_deadline_is_its_latest_sets_and_increments_keep_it() -> None:
    writes = [Write(K, at(1), Kind.STRING, value=b"5", deadline=9_000), incr(at(2, "us"), 1)]
    assert only(writes) == (Kind.STRING, b"6") and resolve_deadline(writes) == 9_000
    later = [*writes, string(at(3, "eu"), b"plain")]  # a SET without a TTL clears it, as in Valkey
    assert only(later) == (Kind.STRING, b"plain") and resolve_deadline(later) is None
    # The expiry itself is a delete stamped at the deadline: a write after it starts a new key.
    expired = [*writes, delete(at(9_000_000, "eu")), string(at(9_000_001, "us"), b"new")]
    assert only(expired) == (Kind.STRING, b"new") and resolve_deadline(expired) is None


def test_sorted_set_scores_are_last_writer_wins_per_member() -> None:
    writes = [zadd(at(1, "eu"), a=1.0, b=2.0), zadd(at(2, "us"), a=5.0)]
    assert only(writes) == (Kind.ZSET, ((b"a", 5.0), (b"b", 2.0)))


def test_a_write_naming_fields_for_a_string_is_refused() -> None:
    try:
        Write(K, at(1), Kind.STRING, put={b"f": b"v"})
    except ValueError as exc:
        assert "string write has no fields" in str(exc)
    else:
        raise AssertionError("accepted")


# Any writes, any order.

KINDS = [Kind.NONE, Kind.STRING, Kind.HASH, Kind.SET, Kind.ZSET]
MEMBERS = [b"a", b"b", b"c"]


@st.composite
def writes(draw: st.DrawFn, keys: tuple[bytes, ...] = (K,)) -> list[Write]:
    n = draw(st.integers(1, 12))
    # Unique stamps: a region never stamps two writes alike, and regions break ties by name.
    stamps = draw(st.lists(st.tuples(st.integers(0, 8), st.sampled_from(["ap", "eu", "us"])),
                           min_size=n, max_size=n, unique=True))
    out = []
    for hlc, region in stamps:
        key = draw(st.sampled_from(keys))
        kind = draw(st.sampled_from(KINDS))
        stamp = Stamp(hlc, region)
        if kind == Kind.STRING and draw(st.booleans()):
            out.append(Write(key, stamp, kind, delta=draw(st.integers(-3, 5))))  # a counter's increment
        elif kind == Kind.STRING:
            out.append(Write(key, stamp, kind, value=draw(st.sampled_from([b"x", b"7", b"-2"])),
                             deadline=draw(st.sampled_from([None, 4_000_000_000_000, 4_100_000_000_000]))))
        elif kind in (Kind.HASH, Kind.SET, Kind.ZSET):
            chosen = draw(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=3, unique=True))
            cut = draw(st.integers(0, len(chosen)))
            value = {Kind.HASH: b"v" + str(hlc).encode(), Kind.SET: b"", Kind.ZSET: float(hlc)}[kind]
            out.append(Write(key, stamp, kind, put={m: value for m in chosen[:cut]},
                             remove=frozenset(chosen[cut:])))
        else:
            out.append(Write(key, stamp, kind))
    return out


@settings(max_examples=200, deadline=None)
@given(writes(), st.randoms(use_true_random=False))
def test_any_order_of_the_same_writes_gives_what_the_rules_say(history: list[Write],
                                                               rng: random.Random) -> None:
    expected = _frozen(resolve(history))
    for _ in range(3):
        order = history[:]
        rng.shuffle(order)
        state = KeyState()
        for write in order:
            state.apply(write)
        assert _frozen(state.visible()) == expected, order
        if expected is not None and expected[0] == Kind.STRING:  # type: ignore[index]
            assert state.deadline == resolve_deadline(history), order


@settings(max_examples=100, deadline=None)
@given(writes(keys=(b"k1", b"k2", b"k3")), st.randoms(use_true_random=False))
def test_regions_that_applied_the_same_writes_have_the_same_digest(history: list[Write],
                                                                   rng: random.Random) -> None:
    digests = set()
    for _ in range(3):
        order = history[:]
        rng.shuffle(order)
        store = Store()
        for write in order:
            store.apply(write)
        digests.add(store.digest())
    assert len(digests) == 1


@settings(max_examples=200, deadline=None)
@given(writes(keys=(b"k1", b"k2")), st.integers(0, 8), st.randoms(use_true_random=False))
def test_collecting_below_the_frontier_changes_no_outcome(history: list[Write], cut: int,
                                                          rng: random.Random) -> None:
    # Every write at or before the frontier has arrived, and some later ones; the rest arrive after
    # collection.
    frontier = Stamp(cut, "zz")
    later = [w for w in history if w.stamp > frontier]
    rng.shuffle(later)
    early = later[: rng.randrange(len(later) + 1)]
    arrived = [w for w in history if w.stamp <= frontier] + early
    rng.shuffle(arrived)
    later = later[len(early):]
    store = Store()
    for write in arrived:
        store.apply(write)
    store.collect(frontier)
    for state in store.keys.values():
        assert all(e.present or e.stamp > frontier for e in state.elements.values())
        assert all(s > frontier for s in state.increments)
    for write in later:
        store.apply(write)
    for key in (b"k1", b"k2"):
        assert _frozen(store.get(key)) == _frozen(resolve(w for w in history if w.key == key)), key


def test_collection_forgets_a_deleted_key_once_settled_and_not_before() -> None:
    store = Store()
    store.apply(sadd(at(1), "m"))
    store.apply(delete(at(3, "us")))
    assert store.collect(at(2, "zz")) == 0 and store.keys[K].tombstones() == 1
    assert store.collect(at(3, "zz")) == 1 and K not in store.keys


# The clock.

def test_stamps_grow_strictly_even_when_the_wall_clock_stands_still_or_steps_back() -> None:
    wall = [100]
    clock = Hlc(clock=lambda: wall[0])
    first, second = clock.now(), clock.now()
    wall[0] = 50
    third = clock.now()
    assert (first, second, third) == (100, 101, 102)


def test_a_stamp_observed_from_a_region_ahead_carries_local_stamps_past_it() -> None:
    wall = [1_000]
    clock = Hlc(clock=lambda: wall[0])
    clock.observe(5_000)
    assert clock.now() == 5_001 and clock.drift() == 4_001
    wall[0] = 9_000
    assert clock.now() == 9_000 and clock.drift() == 0


def test_the_real_clock_is_in_microseconds() -> None:
    import time

    before = time.time_ns() // 1000
    stamp = Hlc().now()
    assert before <= stamp <= time.time_ns() // 1000 + 1


def test_a_removal_newer_than_the_frontier_is_kept_through_collection() -> None:
    store = Store()
    store.apply(sadd(at(1), "m"))
    store.apply(srem(at(5, "us"), "m"))  # arrived early; an older add from another region is on its way
    store.collect(at(2, "zz"))
    store.apply(sadd(at(4, "ap"), "m", "n"))
    assert store.get(K) == (Kind.SET, frozenset({b"n"}))


def test_the_frontier_is_the_oldest_newest_stamp_and_waits_for_every_region() -> None:
    own = Stamp(500, "east")
    assert frontier(own, {"west": 300, "ap": 700}) == Stamp(300, "west")
    assert frontier(own, {"west": 900}) == own
    assert frontier(own, {}) == own
    assert frontier(own, {"west": 300, "ap": 0}) is None
    # Equal clocks: the region whose name sorts first is the older stamp.
    assert frontier(Stamp(300, "east"), {"west": 300}) == Stamp(300, "east")
