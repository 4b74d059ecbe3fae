"""Runs in the client pod: AUTH as USER with PASSWORD on HOST:6379, then a write and a read.

Usage: python auth.py HOST USER PASSWORD (USER and PASSWORD "" for no AUTH). Prints JSON:
{"ok": true} or {"ok": false, "error": "..."} with the server's answer.
"""

import json
import sys

import redis

host, user, password = sys.argv[1:4]
try:
    client = redis.Redis(
        host=host, port=6379, username=user or None, password=password or None, protocol=2, socket_timeout=5
    )
    client.set("users:e2e", "written")
    out = {"ok": client.get("users:e2e") == b"written"}
except redis.RedisError as err:
    out = {"ok": False, "error": f"{type(err).__name__}: {err}"}
print(json.dumps(out))
