"""Runs in the client pod: is every hash slot served by the shard CLUSTER SHARDS says owns it?

Usage: python ownership.py HOST. Writes one key into each of the 16384 slots through redis-py's
cluster client (a stock client, following the slot map and MOVED), then asks every shard's primary
directly, without a cluster client: the owner must answer each of its keys with the value written,
and every other primary must refuse it with MOVED naming the owner. Prints JSON:
{"written": N, "shards": [{"primary", "address", "slots", "served"}], "problems": [first 20]}.
"""

import json
import sys

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError

SLOTS = 16384
host = sys.argv[1]


def field(entry, name):
    """A field of a CLUSTER SHARDS entry: a flat field/value array under RESP2 (a map under RESP3)."""
    if not isinstance(entry, dict):
        entry = dict(zip(entry[::2], entry[1::2], strict=True))
    value = entry.get(name, entry.get(name.encode()))
    return value.decode() if isinstance(value, bytes) else value


def key_in_every_slot():
    """slot -> a key that hashes to it (about 170,000 hashes: every slot is hit by then)."""
    keys, i = {}, 0
    while len(keys) < SLOTS:
        keys.setdefault(key_slot(f"owned:{i}".encode()), f"owned:{i}")
        i += 1
    return keys


keys = key_in_every_slot()
cluster = RedisCluster(host=host, port=6379, socket_timeout=10, cluster_error_retry_attempts=10)
pipe = cluster.pipeline()
for slot, key in keys.items():
    pipe.set(key, f"value-{slot}")
written = sum(1 for ok in pipe.execute() if ok is True)

shards = []
owner = {}
for entry in redis.Redis(host=host, port=6379, socket_timeout=10).execute_command("CLUSTER", "SHARDS"):
    primary = next(n for n in field(entry, "nodes") if field(n, "role") == "master")
    flat = [int(x) for x in field(entry, "slots")]
    shard = {
        "primary": field(primary, "hostname"),
        "address": f"{field(primary, 'endpoint')}:{field(primary, 'port')}",
        "slots": sum(last - first + 1 for first, last in zip(flat[::2], flat[1::2], strict=True)),
        "served": 0,
    }
    for first, last in zip(flat[::2], flat[1::2], strict=True):
        for slot in range(first, last + 1):
            owner[slot] = len(shards)
    shards.append(shard)

problems = [f"slot {s} has no owner" for s in range(SLOTS) if s not in owner]
for index, shard in enumerate(shards):
    address, port = shard["address"].rsplit(":", 1)
    direct = redis.Redis(host=address, port=int(port), socket_timeout=10).pipeline(transaction=False)
    slots = sorted(keys)
    for slot in slots:
        direct.get(keys[slot])
    for slot, answer in zip(slots, direct.execute(raise_on_error=False), strict=True):
        if owner.get(slot) == index:
            if answer == f"value-{slot}".encode():
                shard["served"] += 1
            else:
                problems.append(f"{shard['primary']} owns slot {slot} but answered {answer!r}")
        elif not isinstance(answer, MovedError):
            problems.append(f"{shard['primary']} does not own slot {slot} but answered {answer!r}")
        elif owner.get(slot) is not None and f"{answer.host}:{answer.port}" != shards[owner[slot]]["address"]:
            problems.append(f"{shard['primary']} sent slot {slot} to {answer.host}:{answer.port}")
print(json.dumps({"written": written, "shards": shards, "problems": problems[:20]}))
