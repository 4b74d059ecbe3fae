"""Runs in the client pod: prints the slots each shard owns (CLUSTER SHARDS) as a JSON list of ranges."""

import json
import sys

import redis


def field(entry, name):
    """A field of a CLUSTER SHARDS entry: a map under RESP3, a flat field/value array under RESP2."""
    if not isinstance(entry, dict):
        entry = dict(zip(entry[::2], entry[1::2], strict=True))
    return entry.get(name, entry.get(name.encode()))


reply = redis.Redis(host=sys.argv[1], port=6379, socket_timeout=5).execute_command("CLUSTER", "SHARDS")
shards = []
for shard in reply:
    flat = [int(x) for x in field(shard, "slots") or []]
    shards.append([flat[i : i + 2] for i in range(0, len(flat), 2)])
print(json.dumps(shards))
