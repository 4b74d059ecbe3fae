"""Runs in the client pod: can a TCP connection to HOST:PORT be opened within 5 s?

Usage: python connect.py HOST PORT. Prints JSON: {"open": true} or {"open": false, "error": "..."}.
A port a NetworkPolicy closes times out (the packets are dropped); one nobody listens on is refused.
"""

import json
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=5):
        out = {"open": True}
except OSError as err:
    out = {"open": False, "error": f"{type(err).__name__}: {err}"}
print(json.dumps(out))
