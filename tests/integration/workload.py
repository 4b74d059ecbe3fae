"""Concurrent writers that remember exactly which writes were acknowledged."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def cli_status(status: dict) -> dict:
    """Fresh `engram local status --json` of the cluster a fixture started."""
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli.main", "local", "status", status["name"],
         "--dir", str(Path(status["dir"]).parent), "--json"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return json.loads(out)


def primary_of(status: dict, shard: int = 0) -> dict:
    primaries = [n for n in status["nodes"] if n["shard"] == shard and n["role"] == "primary"]
    assert primaries, f"shard {shard} has no primary: {status['nodes']}"
    return primaries[0]


def client_for(node: dict, **kwargs: object) -> redis.Redis:
    host, port = node["address"].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), **kwargs)


def control_for(node: dict, **kwargs: object) -> redis.Redis:
    """A connection to the node's control port: ENGRAM.STATUS and ENGRAM.FAILOVER live there only.

    RESP2: the control port speaks no HELLO, which redis-py sends first for RESP3 (its default).
    """
    host, port = node["admin"].rsplit(":", 1)
    # A TLS cluster's control port speaks TLS only, with the cluster's CA (status "admin_ca").
    tls = {"ssl": True, "ssl_ca_certs": node["admin_ca"]} if node.get("admin_ca") else {}
    return redis.Redis(host=host, port=int(port), **{"protocol": 2, **tls, **kwargs})


def control_status(node: dict, **kwargs: object) -> dict[str, str]:
    """The node's ENGRAM.STATUS fields, from its control port."""
    raw = control_for(node, **kwargs).execute_command("ENGRAM.STATUS")
    return {k.decode(): v.decode() for k, v in zip(raw[::2], raw[1::2], strict=True)}


def wait_for_new_primary(status: dict, old_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = cli_status(status)
        for node in fresh["nodes"]:
            if node["role"] == "primary" and node["id"] != old_id:
                # The node still says it is primary, and its data path answers clients.
                try:
                    if control_status(node, socket_timeout=2).get("role") != "primary":
                        continue
                    client_for(node, socket_timeout=2).ping()
                except redis.RedisError:
                    continue
                return node
        time.sleep(0.2)
    raise AssertionError(f"no node other than {old_id} became primary within {timeout}s")


@dataclass
class Writers:
    """N threads writing unique keys through the endpoint; acked holds what was acknowledged."""

    endpoint: str
    count: int = 8
    prefix: str = "w"
    acked: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    first_ack_after: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _marks: dict[str, float] = field(default_factory=dict)

    def start(self) -> Writers:
        for index in range(self.count):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def mark(self, name: str) -> None:
        """Record now; first_ack_after[name] becomes the delay to the first acknowledged write
        that was sent after this moment (a reply already on its way does not count)."""
        self._marks[name] = time.monotonic()

    def _connect(self) -> redis.Redis:
        host, port = self.endpoint.rsplit(":", 1)
        return redis.Redis(host=host, port=int(port), socket_timeout=15, socket_connect_timeout=2)

    def _run(self, index: int) -> None:
        client = self._connect()
        n = 0
        while not self._stop.is_set():
            key = f"{self.prefix}{index}:{n}"
            sent = time.monotonic()
            try:
                client.set(key, n)
            except redis.RedisError:
                with self._lock:
                    self.errors += 1
                time.sleep(0.02)
                client = self._connect()
                n += 1  # the outcome is unknown: never reuse the key
                continue
            now = time.monotonic()
            with self._lock:
                self.acked[key] = n
                for name, at in self._marks.items():
                    if name not in self.first_ack_after and sent >= at:
                        self.first_ack_after[name] = now - at
            n += 1

    def wait_for_ack_after(self, name: str, timeout: float) -> float:
        """Seconds from the mark `name` to its first acknowledged write, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while name not in self.first_ack_after:
            assert time.monotonic() < deadline, f"no write was acknowledged within {timeout:g}s of {name!r}"
            time.sleep(0.05)
        return self.first_ack_after[name]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def missing(self, client: redis.Redis) -> list[str]:
        """Acknowledged writes that are not readable with their value."""
        keys = list(self.acked)
        values = read_all(client, keys)
        expected = [str(self.acked[key]).encode() for key in keys]
        return [key for key, want, got in zip(keys, expected, values, strict=True) if got != want]


def read_all(client: redis.Redis, keys: list[str]) -> list[bytes | None]:
    """GET every key, pipelined (MGET would be refused across slots, as in Valkey cluster mode)."""
    values: list[bytes | None] = []
    for start in range(0, len(keys), 500):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 500]:
            pipe.get(key)
        values += pipe.execute()
    return values
