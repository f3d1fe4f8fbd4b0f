"""Writes to Redis, batched per destination: another process's inbox, or a normal channel's
stream.

Sends to one destination are queued in its outbox, which has one writer task. The first send
to an idle destination is written at once; sends that arrive while that write is in flight go
together in the next script call (up to ``MAX_BATCH_MESSAGES`` or about ``MAX_BATCH_BYTES``),
in order. Each caller still gets its own ``Delivery`` (or the write's error). An outbox is
forgotten as soon as it is empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio.cluster import RedisCluster

from clusterlayer import keys
from clusterlayer.cancel import raise_if_cancelled
from clusterlayer.scripts import Delivery, InboxEntry, deliver_inbox, send_channel

# One script call carries at most this many messages or (roughly) bytes.
MAX_BATCH_MESSAGES = 512
MAX_BATCH_BYTES = 1 << 20

# The channels one message is for, its payload, and its sender's future.
Pending = tuple[list[str], bytes, "asyncio.Future[Delivery]"]
Writer = Callable[[list[Pending]], Awaitable[list[Delivery]]]


class Outbox:
    """Messages waiting to be written to one destination, written in batches.

    The first send to an idle destination is written at once; sends that arrive while a write
    is in flight wait for it and then go together in the next one, in order. So a sender that
    awaits each send pays one round trip per message, and one with many sends in flight pays
    one round trip per batch.
    """

    __slots__ = ("key", "owner", "pending", "task", "write")

    def __init__(self, owner: Outboxes, key: str, write: Writer) -> None:
        self.owner = owner
        self.key = key
        self.write = write
        self.pending: list[Pending] = []
        self.task: asyncio.Task[None] | None = None

    def enqueue(self, channels: list[str], payload: bytes) -> asyncio.Future[Delivery]:
        future: asyncio.Future[Delivery] = self.owner.loop.create_future()
        self.pending.append((channels, payload, future))
        if self.task is None:
            self.task = self.owner.loop.create_task(self._drain())
        return future

    def _take_batch(self) -> list[Pending]:
        size = 0
        count = 0
        for _, payload, _ in self.pending:
            if count and (count >= MAX_BATCH_MESSAGES or size + len(payload) > MAX_BATCH_BYTES):
                break
            size += len(payload)
            count += 1
        batch = self.pending[:count]
        del self.pending[:count]
        return batch

    async def _drain(self) -> None:
        try:
            while self.pending:
                raise_if_cancelled()  # close() stops the writer: leave the rest unsent
                batch = self._take_batch()
                try:
                    results = await self.write(batch)
                except BaseException as exc:
                    for _, _, future in batch:
                        if not future.done():
                            if isinstance(exc, asyncio.CancelledError):
                                future.cancel()
                            else:
                                future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, _, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self.task = None
            for _, _, future in self.pending:  # only left behind when cancelled by close()
                future.cancel()
            self.pending.clear()
            self.owner.forget(self)


class Outboxes:
    """One process's outboxes, by destination stream key, each made on its first send."""

    def __init__(
        self,
        client: RedisCluster,
        *,
        loop: asyncio.AbstractEventLoop,
        prefix: str,
        inbox_capacity: int,
        expiry_ms: int,
        get_capacity: Callable[[str], int],
    ) -> None:
        self.client = client
        self.loop = loop
        self.prefix = prefix
        self.inbox_capacity = inbox_capacity
        self.expiry_ms = expiry_ms
        self.get_capacity = get_capacity
        self.by_key: dict[str, Outbox] = {}

    def to_process(self, owner: str) -> Outbox:
        """The outbox to the inbox of process ``owner``: the script refuses if it is gone."""
        key = keys.inbox(self.prefix, owner)
        outbox = self.by_key.get(key)
        if outbox is None:
            alive = keys.alive(self.prefix, owner)
            full = keys.full(self.prefix, owner)

            async def write(batch: list[Pending]) -> list[Delivery]:
                return await deliver_inbox(
                    self.client,
                    inbox=key,
                    alive=alive,
                    full=full,
                    entries=[InboxEntry(channels, payload) for channels, payload, _ in batch],
                    maxlen=self.inbox_capacity,
                    capacity=self.inbox_capacity,
                    expiry_ms=self.expiry_ms,
                )

            outbox = self.by_key[key] = Outbox(self, key, write)
        return outbox

    def to_channel(self, channel: str) -> Outbox:
        """The outbox to the stream of normal channel ``channel``, within its capacity."""
        key = keys.channel_stream(self.prefix, channel)
        outbox = self.by_key.get(key)
        if outbox is None:
            capacity = self.get_capacity(channel)

            async def write(batch: list[Pending]) -> list[Delivery]:
                return await send_channel(
                    self.client,
                    stream=key,
                    payloads=[payload for _, payload, _ in batch],
                    maxlen=capacity,
                    capacity=capacity,
                    expiry_ms=self.expiry_ms,
                )

            outbox = self.by_key[key] = Outbox(self, key, write)
        return outbox

    def drains(self) -> list[asyncio.Task[None]]:
        """The writer tasks in flight, for close() to let them finish."""
        return [outbox.task for outbox in self.by_key.values() if outbox.task is not None]

    def forget(self, outbox: Outbox) -> None:
        if self.by_key.get(outbox.key) is outbox:
            del self.by_key[outbox.key]
