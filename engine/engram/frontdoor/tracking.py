"""Key-level tracking of writes that Valkey executed but the journal has not committed yet.

A read reply that touches such a key is held until those writes commit, so no client observes
data a crash could take back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class WriteGroup:
    """Writes of one connection covered by one injected WAIT; resolves when they commit."""

    __slots__ = ("_waiters", "committed", "done", "keys", "unknown_keys")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.unknown_keys = False
        self.done = False
        self.committed = False
        self._waiters: list[Callable[[], None]] = []

    def on_done(self, callback: Callable[[], None]) -> None:
        if self.done:
            callback()
        else:
            self._waiters.append(callback)

    def _finish(self, committed: bool) -> None:
        self.done = True
        self.committed = committed
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()


class PendingWrites:
    """Which keys have uncommitted writes, shared by every connection of the node."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, set[WriteGroup]] = {}
        self._unknown: set[WriteGroup] = set()
        self._all: set[WriteGroup] = set()

    def __len__(self) -> int:
        return len(self._all)

    def register(self, group: WriteGroup, keys: Iterable[bytes] | None) -> None:
        """Record that group writes keys (None: keys unknown, every read must wait for it)."""
        self._all.add(group)
        if keys is None:
            group.unknown_keys = True
            self._unknown.add(group)
            return
        by_key = self._by_key
        for key in keys:
            group.keys.append(key)
            groups = by_key.get(key)
            if groups is None:
                by_key[key] = {group}
            else:
                groups.add(group)

    def resolve(self, group: WriteGroup, committed: bool = True) -> None:
        """The group's writes are committed (or will never be: the node is stepping down)."""
        if group.done:
            return
        self._all.discard(group)
        self._unknown.discard(group)
        by_key = self._by_key
        for key in group.keys:
            groups = by_key.get(key)
            if groups is not None:
                groups.discard(group)
                if not groups:
                    del by_key[key]
        group._finish(committed)

    def blocking(self, keys: list[bytes] | None) -> list[WriteGroup]:
        """Groups a read of keys must wait for (keys None: unknown, so all of them)."""
        if not self._all:
            return []
        if keys is None:
            return list(self._all)
        found: set[WriteGroup] = set(self._unknown)
        by_key = self._by_key
        for key in keys:
            groups = by_key.get(key)
            if groups:
                found.update(groups)
        return list(found)

    def resolve_all(self, committed: bool) -> None:
        for group in list(self._all):
            self.resolve(group, committed)
