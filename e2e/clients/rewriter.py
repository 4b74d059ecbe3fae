"""Runs in the client pod: overwrites a set of keys round-robin, logging every acknowledged write.

Usage: python rewriter.py HOST SECONDS PREFIX STOPFILE [KEYS]. Writes "key value" for each SET the
cluster acknowledged, until STOPFILE exists or SECONDS pass, then writes STOPFILE.done, a JSON
summary: {"acknowledged", "errors", "longest_gap_seconds"} (the longest time between two
acknowledged writes, what a client saw of an outage). A write without an answer is retried with
the same value until acknowledged, so a key holds its last
logged value; one still unanswered when the writer stops is logged as "? key value" (it may have
landed or not).
"""

import json
import os
import sys
import time

from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

# RedisClusterException is not a RedisError: redis-py raises it when no startup node answers, as
# while a lost zone's pods are still behind the Service.
FAILED = (RedisError, RedisClusterException, OSError)

host, seconds, prefix, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
keys = int(sys.argv[5]) if len(sys.argv) > 5 else 500


def connect() -> RedisCluster:
    return RedisCluster(host=host, port=6379, socket_timeout=5, cluster_error_retry_attempts=10)


client = None
deadline = time.monotonic() + seconds
i = 0
errors = 0
pending = None
last_ack = None
longest_gap = 0.0
while time.monotonic() < deadline and not os.path.exists(stop):
    key, value = f"{prefix}:{i % keys}", f"v{i}"
    pending = (key, value)
    try:
        if client is None:
            client = connect()
        if client.set(key, value):
            print(key, value, flush=True)
            now = time.monotonic()
            if last_ack is not None:
                longest_gap = max(longest_gap, now - last_ack)
            last_ack = now
            pending = None
            i += 1
    except FAILED as err:  # unacknowledged: retried with the same key and value on a new client
        errors += 1
        print(f"# {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        time.sleep(0.2)
        client = None
if pending is not None:
    print("?", *pending, flush=True)
with open(stop + ".done", "w") as done:
    json.dump({"acknowledged": i, "errors": errors, "longest_gap_seconds": round(longest_gap, 3)}, done)
