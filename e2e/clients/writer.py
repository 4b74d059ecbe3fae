"""Runs in the client pod: writes keys through the configuration endpoint, logging every acknowledged one.

Usage: python writer.py HOST SECONDS PREFIX. Each acknowledged SET is printed as its key, so the
test can later read back every write the cluster acknowledged, even across a failover.
"""

import sys
import time

from redis.cluster import RedisCluster
from redis.exceptions import RedisError

host, seconds, prefix = sys.argv[1], float(sys.argv[2]), sys.argv[3]
client = RedisCluster(host=host, port=6379, socket_timeout=5, cluster_error_retry_attempts=10)
deadline = time.monotonic() + seconds
i = 0
while time.monotonic() < deadline:
    key = f"{prefix}:{i}"
    try:
        if client.set(key, f"value-{i}"):
            print(key, flush=True)
            i += 1
    except RedisError as err:  # unacknowledged: not printed, retried with the same key
        print(f"# {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        time.sleep(0.2)
        client = RedisCluster(host=host, port=6379, socket_timeout=5, cluster_error_retry_attempts=10)
