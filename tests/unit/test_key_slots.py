"""Key slots: known CRC16 and slot vectors, and the {hash tag} rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engram.cluster.slots import SLOTS, crc16, hash_tag, key_hash_slot


def test_crc16_is_xmodem() -> None:
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        (b"", 0),
        (b"a", 15495),
        (b"foo", 12182),
        (b"bar", 5061),
        (b"hello", 866),
        (b"somekey", 11058),
        ("ключ".encode(), 10303),
        (b"\x00\xff", 7920),
    ],
)
def test_known_key_slots(key: bytes, slot: int) -> None:
    assert key_hash_slot(key) == slot


def test_keys_with_the_same_hash_tag_share_a_slot() -> None:
    assert key_hash_slot(b"{user1000}.following") == key_hash_slot(b"{user1000}.followers") == 3443
    assert key_hash_slot(b"{user1000}.following") == key_hash_slot(b"user1000")


@pytest.mark.parametrize(
    ("key", "hashed"),
    [
        (b"foo{bar}{zap}", b"bar"),  # only the first tag counts
        (b"foo{{bar}}zap", b"{bar"),  # from the first '{' to the first '}' after it
        (b"foo{}{bar}", b"foo{}{bar}"),  # an empty first tag means the whole key
        (b"{}", b"{}"),
        (b"{", b"{"),  # unclosed
        (b"}{a}", b"a"),  # a '}' before the '{' is ordinary
        (b"plain", b"plain"),
    ],
)
def test_hash_tag_rules(key: bytes, hashed: bytes) -> None:
    assert hash_tag(key) == hashed
    assert key_hash_slot(key) == crc16(hashed) % SLOTS


def test_there_are_16384_slots() -> None:
    assert SLOTS == 16384


@given(st.binary(max_size=64))
def test_every_key_has_a_slot_in_range_equal_to_its_tags(key: bytes) -> None:
    slot = key_hash_slot(key)
    assert 0 <= slot < SLOTS
    assert slot == crc16(hash_tag(key)) % SLOTS
