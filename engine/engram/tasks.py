"""Stopping asyncio tasks for certain.

On Python 3.11, `asyncio.wait_for` returns its result instead of raising when a cancellation arrives
together with that result (fixed in 3.12). A task looping over journal requests can therefore lose
one `cancel()` and go on, and an `await task` after it waits forever: a finished reshard was seen
to hang that way after its last slot moved.
"""

from __future__ import annotations

import asyncio

# How long a cancelled task gets to finish before it is cancelled again.
AGAIN_AFTER = 0.5


async def cancel_and_wait(*tasks: asyncio.Future | None, again_after: float = AGAIN_AFTER) -> None:
    """Cancel the tasks and return once each is done, cancelling again any that went on; their
    results and exceptions are dropped."""
    pending = {task for task in tasks if task is not None and not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)
    for task in tasks:
        if task is not None and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
