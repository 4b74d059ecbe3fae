"""Runs in the client pod: for each engine pod IP given, prints (JSON) its ENGRAM.STATUS from the
node's control port and the modules Valkey loaded, asked on the client port."""

import json
import sys

import redis

CLIENT_PORT = 6379
CONTROL_PORT = 16379


def connect(ip, port):
    # RESP2: the control port answers ENGRAM.STATUS, ENGRAM.FAILOVER and PING, not HELLO.
    return redis.Redis(host=ip, port=port, protocol=2, socket_timeout=5)


out = {}
for ip in sys.argv[1:]:
    raw = connect(ip, CONTROL_PORT).execute_command("ENGRAM.STATUS")
    status = {k.decode(): v.decode() for k, v in zip(raw[::2], raw[1::2], strict=True)}
    modules = connect(ip, CLIENT_PORT).execute_command("MODULE", "LIST")
    names = [dict(zip(m[::2], m[1::2], strict=True))[b"name"].decode() for m in modules]
    out[ip] = {"status": status, "modules": names}
print(json.dumps(out))
