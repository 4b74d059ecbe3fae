"""Runs in the client pod: the cluster over TLS, and the same port in plain text.

Usage: python tls.py HOST CA_FILE. Prints JSON: {"tls": {"ok": ...}, "plain": {"ok": ..., "error": ...}}.
TLS goes through redis-py's cluster client, so the nodes CLUSTER SLOTS announces are dialled with TLS
and verified against CA_FILE by their pod names.
"""

import json
import sys

import redis
from redis.cluster import RedisCluster

host, ca_file = sys.argv[1:3]


def attempt(action):
    try:
        return {"ok": action()}
    except (redis.RedisError, OSError) as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}


def over_tls():
    client = RedisCluster(host=host, port=6379, ssl=True, ssl_ca_certs=ca_file, socket_timeout=5)
    for i in range(20):
        client.set(f"tls:{i}", str(i))
    return all(client.get(f"tls:{i}") == str(i).encode() for i in range(20))


def in_plain_text():
    return redis.Redis(host=host, port=6379, socket_timeout=5).ping()


print(json.dumps({"tls": attempt(over_tls), "plain": attempt(in_plain_text)}))
