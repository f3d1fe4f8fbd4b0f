"""One process of the layer: a layer instance on one event loop, with its own id and client.

redis-py's asyncio connections belong to a loop, so a layer used from two loops behaves like two
processes. A ``Process`` owns its presence in Redis (registration creates the alive key and the
inbox; the heartbeat renews them; ``close`` deletes them) and the routing of each send to its
destination: a mailbox of this process (never through Redis), another process's inbox, or a
normal channel's stream. Its collaborators do the rest: ``inbox`` (reading the inbox), ``local``
and ``normal`` (mailboxes), ``outbox`` (batched writes), ``groups`` (membership) and ``streams``
(the consumer-group reader under both readers).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from typing import Protocol

from channels.exceptions import ChannelFull
from redis.asyncio.cluster import RedisCluster

from clusterlayer import keys
from clusterlayer.cancel import raise_if_cancelled
from clusterlayer.errors import UNAVAILABLE_ERRORS, ProcessGone
from clusterlayer.groups import FanOut, Groups
from clusterlayer.inbox import Inbox
from clusterlayer.local import LocalChannels
from clusterlayer.normal import NormalChannels
from clusterlayer.outbox import Outboxes
from clusterlayer.scripts import Delivery
from clusterlayer.streams import GROUP, ClaimPolicy, StreamReader

logger = logging.getLogger(__name__)


def process_of(channel: str) -> str | None:
    """The process id inside a process-local channel name, or None for a normal channel."""
    bang = channel.find("!")
    if bang < 0:
        return None
    return channel[:bang].rpartition(".")[2]


async def stop_tasks(tasks: list[asyncio.Task[None]], *, within: float) -> None:
    """Cancel ``tasks`` and wait until they have ended, for at most ``within`` seconds.

    Every loop of the layer ends on the first cancel even when redis-py drops it (``cancel``);
    the cancel is still repeated until the tasks have ended, for code that is not the layer's.
    """
    deadline = time.monotonic() + within
    pending = {task for task in tasks if not task.done()}
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        logger.warning("task %s did not stop within %.1f s", task.get_name(), within)


class LayerConfig(Protocol):
    """What a process reads of its layer (``ClusterChannelLayer`` provides it)."""

    prefix: str
    expiry: float
    group_expiry: float
    inbox_capacity: int
    process_ttl: float
    heartbeat_interval: float
    block_timeout: float
    read_count: int
    socket_timeout: float
    consumer_name: str
    claim_idle: float
    max_deliveries: int

    def build_client(self) -> RedisCluster: ...

    def get_capacity(self, channel: str) -> int: ...


class Process:
    """The layer as seen by one event loop: its id, client, keys, tasks and collaborators."""

    def __init__(self, layer: LayerConfig, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        self.layer = layer
        self.loop = loop
        self.id = secrets.token_hex(8)
        # The consumer name of its reads: stable for as long as the deployment keeps
        # ``consumer_name`` (a restarted process at once takes back what it left pending), and
        # unique among the layer's live loops (``slot``: the lowest free index).
        self.slot = slot
        self.consumer = f"{layer.consumer_name}.{slot}"
        self.client = layer.build_client()
        self.registered = False
        self.closed = False
        self._register_lock = asyncio.Lock()
        prefix = layer.prefix
        self.inbox_key = keys.inbox(prefix, self.id)
        self.alive_key = keys.alive(prefix, self.id)
        self.full_key = keys.full(prefix, self.id)
        self.ttl_ms = int(layer.process_ttl * 1000)
        expiry_ms = int(layer.expiry * 1000)
        self.tasks: list[asyncio.Task[None]] = []
        self.reader = StreamReader(
            self.client,
            consumer=self.consumer,
            read_count=layer.read_count,
            block_ms=int(layer.block_timeout * 1000),
            expiry=layer.expiry,
            claim=ClaimPolicy(
                idle_ms=int(layer.claim_idle * 1000), max_deliveries=layer.max_deliveries
            ),
            closed=self.is_closed,
        )
        self.local = LocalChannels(
            self.client,
            process_id=self.id,
            full_key=self.full_key,
            ttl_ms=self.ttl_ms,
            get_capacity=layer.get_capacity,
            closed=self.is_closed,
        )
        self.inbox = Inbox(
            self.reader, self.local, key=self.inbox_key, ttl_ms=self.ttl_ms, process_id=self.id
        )
        self.normal = NormalChannels(
            self.reader,
            loop=loop,
            prefix=prefix,
            expiry_ms=expiry_ms,
            get_capacity=layer.get_capacity,
        )
        self.outboxes = Outboxes(
            self.client,
            loop=loop,
            prefix=prefix,
            inbox_capacity=layer.inbox_capacity,
            expiry_ms=expiry_ms,
            get_capacity=layer.get_capacity,
        )
        self.groups = Groups(
            self.client, prefix=prefix, group_expiry=layer.group_expiry, fan_out=self.fan_out
        )

    def is_closed(self) -> bool:
        return self.closed

    def owns(self, owner: str) -> bool:
        """Whether the channels of process ``owner`` are this process's own."""
        return owner == self.id and self.registered

    # --- registration and shutdown ----------------------------------------------------------

    async def register(self) -> None:
        """Create the inbox and the alive key, then start the reader, heartbeat and marks."""
        if self.registered:
            return
        async with self._register_lock:
            if self.registered:
                return
            if self.closed:
                raise RuntimeError("the channel layer was closed on this event loop")
            pipe = self.client.pipeline()
            pipe.set(self.alive_key, b"1", px=self.ttl_ms)
            pipe.xgroup_create(self.inbox_key, GROUP, id="0", mkstream=True)
            pipe.pexpire(self.inbox_key, self.ttl_ms)
            await pipe.execute()
            self.registered = True
            self.tasks = [
                self.loop.create_task(self.inbox.read(), name=f"clusterlayer-reader-{self.id}"),
                self.loop.create_task(self._heartbeat(), name=f"clusterlayer-heartbeat-{self.id}"),
                self.loop.create_task(
                    self.local.publish_marks(), name=f"clusterlayer-marks-{self.id}"
                ),
            ]
            logger.debug("process %s registered inbox %s", self.id, self.inbox_key)

    async def _heartbeat(self) -> None:
        """Keep the alive key, inbox and full set alive; drop expired messages from mailboxes."""
        while not self.closed:
            raise_if_cancelled()
            await asyncio.sleep(self.layer.heartbeat_interval)
            try:
                pipe = self.client.pipeline()
                pipe.set(self.alive_key, b"1", px=self.ttl_ms)
                pipe.pexpire(self.inbox_key, self.ttl_ms)
                pipe.pexpire(self.full_key, self.ttl_ms)
                await pipe.execute()
            except UNAVAILABLE_ERRORS as exc:
                logger.warning("process %s: heartbeat failed: %s", self.id, exc)
            now = time.time()
            self.local.sweep(now)
            self.normal.sweep(now)

    async def close(self) -> None:
        """1. Stop the reader, heartbeat, marks and fetchers (a read cut short leaves its
        entries pending, which only matters to a process that goes on reading; this one stops).
        2. Let writes in flight finish, within the socket timeout.
        3. Delete the alive key, inbox and full set, so that senders learn at once that this
           process is gone instead of waiting for the TTL.
        4. Close the client.
        """
        self.closed = True
        within = self.layer.socket_timeout
        await stop_tasks([*self.tasks, *self.normal.fetchers.values()], within=within)
        drains = self.outboxes.drains()
        if drains:
            await asyncio.wait(drains, timeout=within)
        if self.registered:
            try:
                pipe = self.client.pipeline()
                pipe.delete(self.alive_key)
                pipe.delete(self.inbox_key)
                pipe.delete(self.full_key)
                await pipe.execute()
            except UNAVAILABLE_ERRORS as exc:
                logger.warning("process %s: unregistering failed (keys expire): %s", self.id, exc)
        await self.client.aclose()
        logger.debug("process %s closed", self.id)

    # --- sending ----------------------------------------------------------------------------

    async def send(self, channel: str, payload: bytes) -> None:
        owner = process_of(channel)
        if owner is None:
            result = await self.outboxes.to_channel(channel).enqueue([channel], payload)
        elif self.owns(owner):
            # Same process: straight into the mailbox, never through Redis.
            self.local.deliver(channel, payload, time.time() + self.layer.expiry, strict=True)
            return
        else:
            result = await self.outboxes.to_process(owner).enqueue([channel], payload)
        if result is Delivery.GONE:
            raise ProcessGone(channel)
        if result is not Delivery.QUEUED:
            raise ChannelFull(channel)

    async def fan_out(self, channels: list[str], payload: bytes) -> FanOut:
        """1. Split the channels by destination: this process, other processes, normal channels.
        2. Put this process's share straight into its mailboxes.
        3. Queue one entry per other process (all its channels) and one per normal channel, all
           written concurrently, batched with other sends to the same place.
        4. Report the channels of processes that are gone, how many channels were full (they
           just miss the message), and the first error of a write.
        """
        by_process: defaultdict[str, list[str]] = defaultdict(list)
        targets: list[list[str]] = []
        futures: list[asyncio.Future[Delivery]] = []
        for channel in channels:
            owner = process_of(channel)
            if owner is None:
                targets.append([channel])
                futures.append(self.outboxes.to_channel(channel).enqueue([channel], payload))
            else:
                by_process[owner].append(channel)
        dropped = 0
        for owner, members in by_process.items():
            if self.owns(owner):
                deadline = time.time() + self.layer.expiry
                for channel in members:
                    if not self.local.deliver(channel, payload, deadline, strict=False):
                        dropped += 1
            else:
                targets.append(members)
                futures.append(self.outboxes.to_process(owner).enqueue(members, payload))
        results = await asyncio.gather(*futures, return_exceptions=True)
        gone: list[str] = []
        error: BaseException | None = None
        for members, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                error = error or result
            elif result is Delivery.GONE:
                gone.extend(members)
            elif result is not Delivery.QUEUED:
                dropped += len(members)
        return FanOut(gone=gone, dropped=dropped, error=error)

    # --- flush ------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key of the prefix except the alive keys, and empty local mailboxes.

        Alive keys are kept because they describe running processes, not messages or groups;
        readers whose inbox disappears recreate it on their next read.
        """
        pattern = keys.pattern(self.layer.prefix)
        doomed = [
            key
            async for key in self.client.scan_iter(match=pattern, count=1000)
            if not key.endswith(b":alive")
        ]
        for start in range(0, len(doomed), 1000):
            pipe = self.client.pipeline()
            for key in doomed[start : start + 1000]:
                pipe.delete(key)
            await pipe.execute()
        self.local.clear()
        self.normal.clear()
