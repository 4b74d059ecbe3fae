"""Key hash slots as Valkey cluster computes them: CRC16 (XMODEM) of the key or its {hash tag}, mod 16384."""

from __future__ import annotations

from binascii import crc_hqx

__all__ = ["SLOTS", "crc16", "hash_tag", "key_hash_slot"]

SLOTS = 16384
_SLOT_MASK = SLOTS - 1


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum Valkey hashes keys with."""
    # binascii.crc_hqx is CPython's table-driven C implementation of exactly this CRC.
    return crc_hqx(data, 0)


def hash_tag(key: bytes) -> bytes:
    """The part of key that is hashed: the text between the first '{' and the next '}', if non-empty."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_hash_slot(key: bytes) -> int:
    """The cluster slot (0..16383) that owns key."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        # An empty tag "{}" does not count: the whole key is hashed, as Valkey does.
        if end > start + 1:
            return crc_hqx(key[start + 1 : end], 0) & _SLOT_MASK
    return crc_hqx(key, 0) & _SLOT_MASK
