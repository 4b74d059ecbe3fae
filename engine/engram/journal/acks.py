"""Pipelined appends: publish now, match the stream's reply later by its inbox token.

nats-py's publish_async drops error replies (its reply callback raises building the error), so
a refused append looked like a lost one and was found out only after a timeout. This inbox
hands every reply, ack or refusal, to the future of the append it answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, replace

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

NO_RESPONDERS = "503"


@dataclass(frozen=True)
class Reply:
    """What the stream answered: an ack (seq, duplicate) or a refusal (code, err_code, description)."""

    seq: int = 0
    duplicate: bool = False
    code: int = 0
    err_code: int = 0
    description: str = ""
    # time.monotonic() when the reply was read off the connection (commit stage timing).
    received_at: float = 0.0

    @property
    def refused(self) -> bool:
        return self.code != 0


def parse_reply(msg: Msg) -> Reply:
    """A JetStream publish reply as a Reply; no responders becomes a 503 refusal."""
    if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
        return Reply(code=503, description="no journal server answered for the stream")
    try:
        body = json.loads(msg.data or b"{}")
    except ValueError:
        return Reply(code=500, description=f"unreadable reply from the journal: {msg.data[:80]!r}")
    error = body.get("error")
    if error:
        return Reply(code=int(error.get("code", 500)), err_code=int(error.get("err_code", 0)),
                     description=str(error.get("description", "")))
    return Reply(seq=int(body.get("seq", 0)), duplicate=bool(body.get("duplicate", False)))


class AckInbox:
    """One wildcard subscription per connection; each pipelined append gets its own token."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._counter = 0
        self._ready: asyncio.Lock = asyncio.Lock()

    async def _start(self) -> None:
        async with self._ready:
            if not self._prefix:
                prefix = f"{self._nc.new_inbox()}."
                await self._nc.subscribe(f"{prefix}*", cb=self._on_reply)
                self._prefix = prefix

    async def send(self, subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future[Reply]:
        """Publish now (in call order); the future resolves with the stream's reply."""
        if not self._prefix:
            await self._start()
        self._counter += 1
        token = str(self._counter)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        return future

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix):])
        if future is not None and not future.done():
            future.set_result(replace(parse_reply(msg), received_at=time.monotonic()))
