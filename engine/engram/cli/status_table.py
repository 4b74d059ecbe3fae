"""The table `engram local status` prints, and `kubectl engram status` too: one shape for both."""

from __future__ import annotations

from typing import Any


def table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def print_status(doc: dict[str, Any]) -> None:
    where = doc.get("dir") or f"namespace {doc.get('namespace', '')}"
    print(f"cluster {doc['name']}  endpoint {doc['endpoint']}  ({where})\n")
    nodes = [("NODE", "SHARD", "SLOTS", "ZONE", "ROLE", "ADDRESS", "CONTROL", "PID", "APPLIED", "SNAPSHOT",
              "RESTARTS")]
    for n in doc["nodes"]:
        role = n["role"] + (f" (halted: {n['halted']})" if n.get("halted") else "")
        pid, applied, restarts = dash(n["pid"]), dash(n["applied_seq"]), str(n["restarts"])
        slots = dash(n.get("slots"))
        control = dash(n.get("admin"))
        seq, age = n.get("snapshot_seq"), n.get("snapshot_age")
        snapshot = f"{seq} ({age}s ago)" if seq is not None and age is not None else "-"
        nodes.append(
            (n["id"], str(n["shard"]), slots, n["zone"], role, n["address"], control, pid, applied, snapshot,
             restarts)
        )
    table(nodes)
    if doc.get("shard_status"):
        print()
        shards = [("SHARD", "PRIMARY", "PRIMARY ZONE", "READY", "COMMITTED", "MAX LAG", "SNAPSHOT")]
        for s in doc["shard_status"]:
            age = s.get("snapshotAgeSeconds")
            seq = s.get("snapshotSeq") or None
            snapshot = f"{seq} ({age}s ago)" if age is not None else dash(seq)
            shards.append((str(s["id"]), dash(s.get("primary")), dash(s.get("primaryZone")),
                           f"{s.get('readyNodes', 0)}/{s.get('nodes', 0)}", str(s.get("committedSeq", 0)),
                           str(s.get("maxReplicaLag", 0)), snapshot))
        table(shards)
    print()
    journal = [("JOURNAL", "ZONE", "URL", "PID", "RESTARTS")]
    journal += [
        (j["target"], j["zone"], j["url"], dash(j["pid"]), str(j["restarts"])) for j in doc["journal"]
    ]
    table(journal)
    if doc.get("network"):
        net = doc["network"]
        print(f"\nzone networks on bridge {net['bridge']} ({net['gateway']})")
        rows = [("ZONE", "NAMESPACE", "ADDRESS", "LINK")]
        rows += [
            (zone, z["namespace"], z["address"], "cut off" if z["isolated"] else "up")
            for zone, z in net["zones"].items()
        ]
        table(rows)
