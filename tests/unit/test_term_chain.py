"""The term chain: which entries of a shard's journal are its history, for every reader alike."""

from __future__ import annotations

from engram.journal.entries import Entry, EntryType
from engram.replication.chain import TermChain, continues_term


def _data(epoch: int, place: int) -> Entry:
    return Entry(EntryType.DATA, epoch, "n", b"x", term_seq=place)


def _leader(epoch: int) -> Entry:
    return Entry(EntryType.LEADER, epoch, "n")


def _admitted(chain: TermChain, entries: list[Entry]) -> tuple[list[bool], TermChain]:
    seen = []
    for entry in entries:
        admitted, chain = chain.follow(entry)
        seen.append(admitted)
    return seen, chain


def test_a_deposed_leaders_leftovers_behind_its_successors_entry_are_not_in_the_history() -> None:
    history = [Entry(EntryType.GENESIS, 0, "n"), _leader(2), _data(2, 1), _leader(3), _data(2, 2),
               _data(2, 3), _data(3, 1), _data(3, 2)]
    admitted, chain = _admitted(TermChain(), history)
    assert admitted == [True, True, True, True, False, False, True, True]
    assert chain == TermChain(3, 3)


def test_a_new_leaders_append_behind_a_leftover_skips_a_place_and_is_not_in_the_history_either() -> None:
    # The new leader's first append was refused (a leftover took its place); its second landed.
    admitted, _ = _admitted(TermChain(), [_leader(3), _data(2, 5), _data(3, 2)])
    assert admitted == [True, False, False]


def test_a_reader_whose_record_predates_the_chain_takes_up_the_first_entry_it_reads() -> None:
    admitted, chain = _admitted(TermChain(), [_data(4, 7), _data(4, 8), _data(4, 10)])
    assert admitted == [True, True, False]
    assert chain == TermChain(4, 9)


def test_continues_term_is_the_next_place_of_the_same_epoch_only() -> None:
    assert continues_term(_data(2, 3), 2, 3)
    assert not continues_term(_data(2, 4), 2, 3)
    assert not continues_term(_data(1, 3), 2, 3)
