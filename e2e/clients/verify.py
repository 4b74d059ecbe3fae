"""Runs in the client pod: reads back every key listed on stdin; prints the ones missing or wrong."""

import sys

from redis.cluster import RedisCluster

host = sys.argv[1]
client = RedisCluster(host=host, port=6379, socket_timeout=5)
keys = [line.strip() for line in sys.stdin if line.strip() and not line.startswith("#")]
bad = []
for key in keys:
    want = "value-" + key.rsplit(":", 1)[1]
    got = client.get(key)
    if got is None or got.decode() != want:
        bad.append(key)
print(f"checked {len(keys)} lost {len(bad)}")
for key in bad[:50]:
    print(key)
