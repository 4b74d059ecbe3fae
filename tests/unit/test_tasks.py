"""cancel_and_wait stops a task whose wait_for swallowed a cancellation (Python 3.11's race)."""

from __future__ import annotations

import asyncio
import sys

from engram.tasks import cancel_and_wait


async def _loop_over_requests(pending: list[asyncio.Future[int]]) -> None:
    """A loop of requests, each awaited with wait_for, like a journal client's."""
    while True:
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        pending.append(reply)
        await asyncio.wait_for(reply, 10)


def _cancel_as_the_reply_lands(task: asyncio.Task[None], pending: list[asyncio.Future[int]]) -> None:
    pending[-1].set_result(1)
    task.cancel()


def test_a_single_cancel_racing_a_reply_is_lost() -> None:
    """The hazard itself: without this, the test below would prove nothing on this Python."""

    async def run() -> bool:
        pending: list[asyncio.Future[int]] = []
        task = asyncio.create_task(_loop_over_requests(pending))
        await asyncio.sleep(0)
        _cancel_as_the_reply_lands(task, pending)
        done, _ = await asyncio.wait({task}, timeout=0.3)
        await cancel_and_wait(task)
        return bool(done)

    # Python 3.12 rewrote wait_for, which then honours the cancel.
    assert asyncio.run(run()) is (sys.version_info >= (3, 12))


def test_cancel_and_wait_stops_a_task_that_lost_a_cancellation() -> None:
    async def run() -> tuple[bool, int]:
        pending: list[asyncio.Future[int]] = []
        task = asyncio.create_task(_loop_over_requests(pending))
        await asyncio.sleep(0)
        async with asyncio.timeout(5):
            pending[-1].set_result(1)
            # Its first cancel() lands with the reply, as in the test above.
            await cancel_and_wait(task, again_after=0.05)
        return task.cancelled(), len(pending)

    cancelled, requests = asyncio.run(run())
    assert cancelled
    if sys.version_info < (3, 12):
        assert requests >= 2, "the loop never went on after the first cancel: the race was not hit"


def test_cancel_and_wait_drops_results_and_exceptions_and_skips_none() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def run() -> None:
        failed = asyncio.create_task(fails())
        await asyncio.sleep(0)
        sleeping = asyncio.create_task(asyncio.sleep(60))
        await cancel_and_wait(failed, None, sleeping)
        assert failed.done() and sleeping.cancelled()

    asyncio.run(run())
