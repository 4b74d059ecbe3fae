"""A server on an event loop in a thread of its own, for tests whose code under test runs its own loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from engram.platforms.local import ports


@contextmanager
def serving(start: Callable[[int], Awaitable[object]]) -> Iterator[int]:
    """Run a server, started by start(port), on a free loopback port until the block ends."""
    port = ports.allocate(1)[0]
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        loop.run_until_complete(start(port))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
