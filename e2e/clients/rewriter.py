"""Runs in the client pod: overwrites a set of keys round-robin, logging every acknowledged write.

Usage: python rewriter.py HOST SECONDS PREFIX STOPFILE [KEYS]. Writes "key value" for each SET the
cluster acknowledged, until STOPFILE exists or SECONDS pass, then creates STOPFILE.done. A write
without an answer is retried with the same value until acknowledged, so a key holds its last
logged value; one still unanswered when the writer stops is logged as "? key value" (it may have
landed or not).
"""

import os
import sys
import time

from redis.cluster import RedisCluster
from redis.exceptions import RedisError

host, seconds, prefix, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
keys = int(sys.argv[5]) if len(sys.argv) > 5 else 500


def connect() -> RedisCluster:
    return RedisCluster(host=host, port=6379, socket_timeout=5, cluster_error_retry_attempts=10)


client = connect()
deadline = time.monotonic() + seconds
i = 0
pending = None
while time.monotonic() < deadline and not os.path.exists(stop):
    key, value = f"{prefix}:{i % keys}", f"v{i}"
    pending = (key, value)
    try:
        if client.set(key, value):
            print(key, value, flush=True)
            pending = None
            i += 1
    except RedisError as err:  # unacknowledged: retried with the same key and value
        print(f"# {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        time.sleep(0.2)
        client = connect()
if pending is not None:
    print("?", *pending, flush=True)
with open(stop + ".done", "w") as done:
    done.write(f"{i}\n")
