"""Readiness probe: `python -m engram.node.probe [--port P] [--max-lag N]` exits 0 when ready.

Ready = the shard's primary, or a replica that applies the journal (not halted by upgrade
protection or a checksum mismatch) and is no more than --max-lag entries behind.

It asks ENGRAM.STATUS on the node's control port (NodeConfig.admin_port): the client port is
Valkey's own, where no such command exists. On a TLS cluster, --tls-ca: the control port speaks TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from engram.node.peer import PeerUnreachable, control_tls, peer_status

# The control port of a node on the default client port 6379 whose admin_port is left at 0.
DEFAULT_CONTROL_PORT = 6379 + 10000


def ready(fields: dict[str, str], max_lag: int) -> tuple[bool, str]:
    role = fields.get("role", "")
    if role == "primary":
        return True, "primary"
    if role != "replica":
        return False, f"role is {role or 'unknown'}"
    if fields.get("halted"):
        return False, f"halted: {fields['halted']}"
    lag = int(fields.get("lag") or 0)
    if lag > max_lag:
        return False, f"replica {lag} entries behind (more than {max_lag})"
    return True, f"replica, {lag} entries behind"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engram-probe", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_CONTROL_PORT,
        help="the node's control port (admin_port), not its client port (default: %(default)s)",
    )
    parser.add_argument("--max-lag", type=int, default=1000, help="journal entries a ready replica may trail")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument(
        "--tls-ca", default="", metavar="FILE",
        help="the control port speaks TLS (a TLS cluster): trust this CA. The name in the certificate "
             "is not checked: the probe asks its own pod's loopback, where no other server can listen",
    )
    args = parser.parse_args(argv)
    tls = control_tls(args.tls_ca, check_hostname=False) if args.tls_ca else None
    try:
        fields = asyncio.run(peer_status(f"{args.host}:{args.port}", args.timeout, tls))
    except (PeerUnreachable, ValueError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    ok, why = ready(fields, args.max_lag)
    print(("ready: " if ok else "not ready: ") + why, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
