"""Runs in the client pod: reads back every key of a rewriter.py log (stdin) through the cluster
client; each must hold its last acknowledged value, or the one write left unanswered at the end."""

import sys

from redis.cluster import RedisCluster

host = sys.argv[1]
last: dict[str, str] = {}
unanswered: dict[str, str] = {}
for line in sys.stdin:
    words = line.split()
    if len(words) == 3 and words[0] == "?":
        unanswered[words[1]] = words[2]
    elif len(words) == 2 and not line.startswith("#"):
        last[words[0]] = words[1]
client = RedisCluster(host=host, port=6379, socket_timeout=5, cluster_error_retry_attempts=10)
bad = []
for key, want in sorted(last.items()):
    raw = client.get(key)
    got = raw.decode() if raw is not None else None
    if got != want and got != unanswered.get(key):
        bad.append(f"{key}: acknowledged {want}, read {got}")
print(f"checked {len(last)} lost {len(bad)}")
for text in bad[:50]:
    print(text)
