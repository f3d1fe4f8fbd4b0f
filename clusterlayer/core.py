"""A Channels layer on Redis Cluster Streams.

How a message travels (docs/channel-layer.md has the whole design):

- Process-local channels (``new_channel()``: ``<prefix>.<process>!<random>``) belong to the
  process (one layer instance on one event loop) that made them. Every process has one inbox
  stream tagged by the process; a send appends to it with one script that first checks that the
  process is alive and the channel not full. One reader per process reads the inbox in batches
  (XREADGROUP BLOCK) and hands each message to the local mailbox of its channel, then
  acknowledges and deletes what it handed over. A send to a channel of the same process goes
  straight to the mailbox and never touches Redis.
- Normal channels each have a stream tagged by the channel, read through one consumer group by
  whichever processes call ``receive`` on them; each message goes to one receiver.
- Groups are sorted sets of channel names scored by the time of ``group_add``.

Sends to one destination that overlap in time are written in one script call, so a busy sender
pays one round trip per batch rather than per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from channels_redis.serializers import registry
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from clusterlayer import keys
from clusterlayer.mailbox import Mailbox
from clusterlayer.scripts import Delivery, InboxEntry, deliver_inbox, send_channel

logger = logging.getLogger(__name__)

# The consumer group on every stream; the consumer name is the reading process's id.
GROUP = "clusterlayer"
# Channel names cannot contain a space, so it separates the channels of one inbox entry.
CHANNEL_SEPARATOR = " "
# One script call carries at most this many messages or (roughly) bytes.
MAX_BATCH_MESSAGES = 512
MAX_BATCH_BYTES = 1 << 20
RETRY_MIN = 0.05
RETRY_MAX = 2.0
PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

# The cluster cannot answer now (down, failing over, unreachable); background loops retry.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    ClusterDownError,
    MasterDownError,
    TryAgainError,
    SlotNotCoveredError,
    RedisClusterException,
    OSError,
)


class ProcessGone(ChannelFull):  # type: ignore[misc]
    """The process that owns a process-local channel no longer heartbeats.

    A ``ChannelFull`` so that code written for any layer treats it as an undeliverable message;
    code that knows this layer can tell "that socket's process died" apart from back-pressure.
    """


def process_of(channel: str) -> str | None:
    """The process id inside a process-local channel name, or None for a normal channel."""
    bang = channel.find("!")
    if bang < 0:
        return None
    return channel[:bang].rpartition(".")[2]


def _entry_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def _entries(response: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREADGROUP reply, in either of redis-py's reply shapes."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(next(iter(response.values())))
    return list(response[0][1])


def _stream_lost(exc: ResponseError) -> bool:
    """The stream or its group is gone (flushed, expired): the reader recreates the group."""
    text = str(exc)
    return text.startswith("NOGROUP") or "no longer exists" in text


async def _stop(tasks: list[asyncio.Task[None]], *, within: float) -> None:
    """Cancel ``tasks`` and wait until they have ended, for at most ``within`` seconds.

    One cancel() is not always enough: on Python 3.11, asyncio.wait_for (which redis-py uses to
    send a command) drops a cancellation that arrives as the write completes (CPython
    gh-86296), and the command goes on. So the tasks also check a closed flag, and the cancel
    is repeated until they have ended.
    """
    deadline = time.monotonic() + within
    pending = {task for task in tasks if not task.done()}
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        logger.warning("task %s did not stop within %.1f s", task.get_name(), within)


class ClusterChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    """Channels layer on Redis Cluster Streams; every option is keyword-only (Channels CONFIG).

    ``url``: any node of the cluster. ``prefix``: of every key (several layers can share one
    cluster). ``expiry``: seconds a message may wait unread. ``group_expiry``: seconds a group
    membership lives after its last ``group_add``. ``capacity`` / ``channel_capacity``: most
    messages waiting per channel (``channel_capacity`` maps glob patterns or compiled regexes to
    capacities). ``inbox_capacity``: most undelivered messages in one process's inbox.
    ``process_ttl`` / ``heartbeat_interval``: how long a silent process counts as alive, and how
    often it says it is. ``block_timeout``: seconds one XREADGROUP waits (must stay below
    ``socket_timeout``). ``read_count``: most entries per read.
    """

    extensions = ["groups", "flush"]

    def __init__(
        self,
        *,
        url: str,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[Any, int] | None = None,
        inbox_capacity: int = 10_000,
        process_ttl: float = 30.0,
        heartbeat_interval: float | None = None,
        block_timeout: float = 2.0,
        read_count: int = 500,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 1.0,
        serializer_format: str = "msgpack",
        symmetric_encryption_keys: list[str | bytes] | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity)
        if not PREFIX_RE.match(prefix):
            raise ValueError(f"prefix {prefix!r}: use letters, digits, '_', '.' or '-'")
        if expiry <= 0 or group_expiry <= 0 or capacity < 1 or inbox_capacity < 1:
            raise ValueError("expiry, group_expiry, capacity and inbox_capacity must be positive")
        heartbeat_interval = process_ttl / 3 if heartbeat_interval is None else heartbeat_interval
        if not 0 < heartbeat_interval <= process_ttl / 2:
            raise ValueError("heartbeat_interval must be positive and at most process_ttl / 2")
        if not 0 < block_timeout < socket_timeout:
            # A blocking read longer than the socket timeout would end in a TimeoutError.
            raise ValueError("block_timeout must be positive and below socket_timeout")
        self.url = url
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.inbox_capacity = inbox_capacity
        self.process_ttl = process_ttl
        self.heartbeat_interval = heartbeat_interval
        self.block_timeout = block_timeout
        self.read_count = read_count
        self.socket_timeout = socket_timeout
        self.socket_connect_timeout = socket_connect_timeout
        self.client_options = dict(client_options or {})
        self._serializer = registry.get_serializer(
            serializer_format,
            random_prefix_length=0,
            expiry=expiry,
            symmetric_encryption_keys=symmetric_encryption_keys,
        )
        self._processes: dict[asyncio.AbstractEventLoop, _Process] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, prefix={self.prefix!r})"

    # --- Channel layer API ------------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; raises ChannelFull (or ProcessGone) if refused."""
        self._require_message(message)
        self.require_valid_channel_name(channel)
        payload = self.serialize(message)
        await self._process().send(channel, payload)

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on ``channel``; a cancelled receive never loses a message."""
        self.require_valid_channel_name(channel)
        process = self._process()
        owner = process_of(channel)
        if owner is None:
            payload = await process.receive_normal(channel)
        elif owner == process.id and process.registered:
            payload = await process.receive_local(channel)
        else:
            raise ValueError(
                f"{channel!r} is not a channel of this process: only the layer instance and "
                f"event loop whose new_channel() made a process-local channel can receive on it"
            )
        return self.deserialize(payload)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel, ``<prefix>.<process id>!<random>``."""
        process = self._process()
        await process.register()
        return f"{prefix}.{process.id}!{secrets.token_hex(6)}"

    async def flush(self) -> None:
        """Delete every message and group under this prefix; processes stay registered."""
        await self._process().flush()

    async def close(self) -> None:
        """Stop this event loop's reader and heartbeat, unregister, and close the client."""
        process = self._processes.pop(asyncio.get_running_loop(), None)
        if process is not None:
            await process.close()

    # --- Groups extension -------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        key = keys.group(self.prefix, group)
        pipe = self._process().client.pipeline()
        pipe.zadd(key, {channel: time.time()})
        # Every member is younger than group_expiry, so the whole set may go after that.
        pipe.pexpire(key, int(self.group_expiry * 1000))
        await pipe.execute()

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._process().client.zrem(keys.group(self.prefix, group), channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send to every member; full channels drop the message, gone processes are pruned."""
        self._require_message(message)
        self.require_valid_group_name(group)
        process = self._process()
        key = keys.group(self.prefix, group)
        pipe = process.client.pipeline()
        pipe.zremrangebyscore(key, "-inf", time.time() - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        if members:
            channels = [member.decode() for member in members]
            await process.fan_out(group, key, channels, self.serialize(message))

    # --- Serialization ----------------------------------------------------------------------

    def serialize(self, message: dict[str, Any]) -> bytes:
        return bytes(self._serializer.serialize(message))

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        message = self._serializer.deserialize(payload)
        assert isinstance(message, dict)
        return message

    # --- Internals --------------------------------------------------------------------------

    @staticmethod
    def _require_message(message: object) -> None:
        if not isinstance(message, dict):
            raise TypeError(f"a message is a dict, not {type(message).__name__}")

    def _process(self) -> _Process:
        """This event loop's incarnation of the layer (redis-py connections are per loop)."""
        loop = asyncio.get_running_loop()
        process = self._processes.get(loop)
        if process is None:
            for stale in [other for other in self._processes if other.is_closed()]:
                del self._processes[stale]
            process = self._processes[loop] = _Process(self, loop)
        return process

    def build_client(self) -> RedisCluster:
        """A cluster client with bounded timeouts and no automatic retry of commands.

        A retried XADD whose first attempt did reach the server would deliver twice; the layer
        promises at most once, so a failed write is reported to the caller instead. Background
        readers retry by themselves.
        """
        options: dict[str, Any] = {
            "decode_responses": False,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            **self.client_options,
        }
        return RedisCluster.from_url(self.url, **options)


_Pending = tuple[list[str], bytes, "asyncio.Future[Delivery]"]
_Writer = Callable[[list[_Pending]], Awaitable[list[Delivery]]]


class _Outbox:
    """Messages waiting to be written to one destination, written in batches.

    The first send to an idle destination is written at once; sends that arrive while a write
    is in flight wait for it and then go together in the next one, in order. So a sender that
    awaits each send pays one round trip per message, and one with many sends in flight pays
    one round trip per batch.
    """

    __slots__ = ("key", "pending", "process", "task", "write")

    def __init__(self, process: _Process, key: str, write: _Writer) -> None:
        self.process = process
        self.key = key
        self.write = write
        self.pending: list[_Pending] = []
        self.task: asyncio.Task[None] | None = None

    def enqueue(self, channels: list[str], payload: bytes) -> asyncio.Future[Delivery]:
        future: asyncio.Future[Delivery] = self.process.loop.create_future()
        self.pending.append((channels, payload, future))
        if self.task is None:
            self.task = self.process.loop.create_task(self._drain())
        return future

    def _take_batch(self) -> list[_Pending]:
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
            if self.process.outboxes.get(self.key) is self:
                del self.process.outboxes[self.key]


class _Process:
    """The layer as seen by one event loop: its id, client, inbox, mailboxes and tasks."""

    def __init__(self, layer: ClusterChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.id = secrets.token_hex(8)
        self.client = layer.build_client()
        self.registered = False
        self.closed = False
        self._register_lock = asyncio.Lock()
        prefix = layer.prefix
        self.inbox_key = keys.inbox(prefix, self.id)
        self.alive_key = keys.alive(prefix, self.id)
        self.full_key = keys.full(prefix, self.id)
        self.ttl_ms = int(layer.process_ttl * 1000)
        self.expiry_ms = int(layer.expiry * 1000)
        self.block_ms = int(layer.block_timeout * 1000)
        # Mailboxes of this process's own "!" channels, and of normal channels being received.
        self.local: dict[str, Mailbox] = {}
        self.prefetched: dict[str, Mailbox] = {}
        self.outboxes: dict[str, _Outbox] = {}
        self.fetchers: dict[str, asyncio.Task[None]] = {}
        # Entries handed to a mailbox but not yet acknowledged, per stream key: a read of the
        # pending list after an error acknowledges these without delivering them again.
        self.unacked: defaultdict[str, set[bytes]] = defaultdict(set)
        self.dirty_marks: set[str] = set()
        self.marks_wakeup = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

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
                self.loop.create_task(self._read_inbox(), name=f"clusterlayer-reader-{self.id}"),
                self.loop.create_task(self._heartbeat(), name=f"clusterlayer-heartbeat-{self.id}"),
                self.loop.create_task(self._publish_marks(), name=f"clusterlayer-marks-{self.id}"),
            ]
            logger.debug("process %s registered inbox %s", self.id, self.inbox_key)

    async def close(self) -> None:
        """1. Stop the reader, heartbeat, marks and fetchers (a read cut short leaves its
        entries pending, which only matters to a process that goes on reading; this one stops).
        2. Let writes in flight finish, within the socket timeout.
        3. Delete the alive key, inbox and full set, so that senders learn at once that this
           process is gone instead of waiting for the TTL.
        4. Close the client.
        """
        self.closed = True
        await _stop([*self.tasks, *self.fetchers.values()], within=self.layer.socket_timeout)
        drains = [outbox.task for outbox in self.outboxes.values() if outbox.task is not None]
        if drains:
            await asyncio.wait(drains, timeout=self.layer.socket_timeout)
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
            result = await self.channel_outbox(channel).enqueue([channel], payload)
        elif owner == self.id and self.registered:
            # Same process: straight into the mailbox, never through Redis.
            self.deliver_local(channel, payload, time.time() + self.layer.expiry, strict=True)
            return
        else:
            result = await self.process_outbox(owner).enqueue([channel], payload)
        if result is Delivery.GONE:
            raise ProcessGone(channel)
        if result is not Delivery.QUEUED:
            raise ChannelFull(channel)

    async def fan_out(self, group: str, key: str, channels: list[str], payload: bytes) -> None:
        """1. Split the members by destination: this process, other processes, normal channels.
        2. Put this process's share straight into its mailboxes.
        3. Queue one entry per other process (all its member channels) and one per normal
           channel, all written concurrently, batched with other sends to the same place.
        4. Remove the members of processes that are gone; full channels just miss the message.
        """
        by_process: defaultdict[str, list[str]] = defaultdict(list)
        targets: list[list[str]] = []
        futures: list[asyncio.Future[Delivery]] = []
        for channel in channels:
            owner = process_of(channel)
            if owner is None:
                targets.append([channel])
                futures.append(self.channel_outbox(channel).enqueue([channel], payload))
            else:
                by_process[owner].append(channel)
        dropped = 0
        for owner, members in by_process.items():
            if owner == self.id and self.registered:
                deadline = time.time() + self.layer.expiry
                for channel in members:
                    if not self.deliver_local(channel, payload, deadline, strict=False):
                        dropped += 1
            else:
                targets.append(members)
                futures.append(self.process_outbox(owner).enqueue(members, payload))
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
        if gone:
            await self.client.zrem(key, *gone)
            logger.info("group %s: removed %d channel(s) of gone processes", group, len(gone))
        if dropped:
            logger.info(
                "group %s: %d of %d channel(s) over capacity missed a message",
                group,
                dropped,
                len(channels),
            )
        if error is not None:
            raise error

    def process_outbox(self, owner: str) -> _Outbox:
        key = keys.inbox(self.layer.prefix, owner)
        outbox = self.outboxes.get(key)
        if outbox is None:
            alive = keys.alive(self.layer.prefix, owner)
            full = keys.full(self.layer.prefix, owner)

            async def write(batch: list[_Pending]) -> list[Delivery]:
                return await deliver_inbox(
                    self.client,
                    inbox=key,
                    alive=alive,
                    full=full,
                    entries=[InboxEntry(channels, payload) for channels, payload, _ in batch],
                    maxlen=self.layer.inbox_capacity,
                    capacity=self.layer.inbox_capacity,
                    expiry_ms=self.expiry_ms,
                )

            outbox = self.outboxes[key] = _Outbox(self, key, write)
        return outbox

    def channel_outbox(self, channel: str) -> _Outbox:
        key = keys.channel_stream(self.layer.prefix, channel)
        outbox = self.outboxes.get(key)
        if outbox is None:
            capacity = self.layer.get_capacity(channel)

            async def write(batch: list[_Pending]) -> list[Delivery]:
                return await send_channel(
                    self.client,
                    stream=key,
                    payloads=[payload for _, payload, _ in batch],
                    maxlen=capacity,
                    capacity=capacity,
                    expiry_ms=self.expiry_ms,
                )

            outbox = self.outboxes[key] = _Outbox(self, key, write)
        return outbox

    # --- local delivery ---------------------------------------------------------------------

    def deliver_local(self, channel: str, payload: bytes, deadline: float, *, strict: bool) -> bool:
        """Put a message in a process-local channel's mailbox, within its capacity.

        ``strict`` (a send from this process) raises ChannelFull on a full mailbox; otherwise
        (the inbox reader, a group send) the message is dropped, and the channel is marked full
        so that other processes' sends are refused before they reach the inbox.
        """
        mailbox = self.local.get(channel)
        if mailbox is None:
            mailbox = self.local[channel] = Mailbox(self.layer.get_capacity(channel))
        if mailbox.at_capacity:
            mailbox.purge_expired(time.time())
        if mailbox.at_capacity:
            if strict:
                raise ChannelFull(channel)
            self.mark(channel, mailbox, full=True)
            logger.debug("process %s: channel %s full, message dropped", self.id, channel)
            return False
        mailbox.put(deadline, payload)
        if mailbox.at_capacity:
            self.mark(channel, mailbox, full=True)
        return True

    def mark(self, channel: str, mailbox: Mailbox, *, full: bool) -> None:
        if mailbox.marked_full != full:
            mailbox.marked_full = full
            self.dirty_marks.add(channel)
            self.marks_wakeup.set()

    def forget_if_idle(self, mailboxes: dict[str, Mailbox], channel: str, mailbox: Mailbox) -> None:
        if mailbox.idle and mailboxes.get(channel) is mailbox:
            del mailboxes[channel]

    # --- receiving --------------------------------------------------------------------------

    async def receive_local(self, channel: str) -> bytes:
        mailbox = self.local.get(channel)
        if mailbox is None:
            mailbox = self.local[channel] = Mailbox(self.layer.get_capacity(channel))
        try:
            return await mailbox.get()
        finally:
            if mailbox.marked_full and not mailbox.at_capacity:
                self.mark(channel, mailbox, full=False)
            self.forget_if_idle(self.local, channel, mailbox)

    async def receive_normal(self, channel: str) -> bytes:
        mailbox = self.prefetched.get(channel)
        if mailbox is None:
            mailbox = self.prefetched[channel] = Mailbox(self.layer.get_capacity(channel))
        mailbox.receivers += 1
        try:
            if channel not in self.fetchers:
                self.fetchers[channel] = self.loop.create_task(
                    self._fetch(channel), name=f"clusterlayer-fetch-{channel}"
                )
            return await mailbox.get()
        finally:
            mailbox.receivers -= 1
            self.forget_if_idle(self.prefetched, channel, mailbox)

    async def _read_inbox(self) -> None:
        """The one reader of this process's inbox.

        1. After a start or an error, first read this consumer's pending entries (ID 0): those
           handed over before the error are only acknowledged, the others are delivered.
        2. Then block for new entries (">"), up to ``read_count`` at a time.
        3. Hand each entry to the mailboxes of its channels; XACK and XDEL the batch (sent
           with the next read).
        4. A lost inbox (flushed, or expired while the heartbeat could not reach Redis) gets its
           group back; an unreachable cluster is retried with backoff.
        """
        await self._consume(self.inbox_key, self._hand_over_inbox, lambda: True, self.ttl_ms)

    async def _fetch(self, channel: str) -> None:
        """Read a normal channel only while receivers here wait for more than is buffered."""
        key = keys.channel_stream(self.layer.prefix, channel)

        def wanted() -> bool:
            mailbox = self.prefetched.get(channel)
            return mailbox is not None and mailbox.receivers > len(mailbox)

        def hand_over(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[bytes]:
            return self._hand_over_channel(key, channel, entries)

        try:
            await self._consume(key, hand_over, wanted, self.expiry_ms)
        finally:
            if self.fetchers.get(channel) is asyncio.current_task():
                del self.fetchers[channel]

    async def _consume(
        self,
        key: str,
        hand_over: Callable[[list[tuple[bytes, dict[bytes, bytes]]]], list[bytes]],
        wanted: Callable[[], bool],
        ttl_ms: int,
    ) -> None:
        """Read ``key`` through the consumer group while ``wanted()``; see ``_read_inbox``.

        The XACK and XDEL of one batch travel in the same pipeline as the next blocking read
        (same key, same node), so a trickle of single messages costs one round trip each.
        """
        recovering = True
        backoff = RETRY_MIN
        done: list[bytes] = []  # handed over, not yet acknowledged
        while wanted() and not self.closed:
            try:
                response: Any
                if recovering:
                    if done:
                        await self._acknowledge(key, done)
                        done = []
                    response = await self.client.xreadgroup(
                        GROUP, self.id, {key: "0"}, count=self.layer.read_count
                    )
                else:
                    pipe = self.client.pipeline()
                    if done:
                        pipe.xack(key, GROUP, *done)
                        pipe.xdel(key, *done)
                    pipe.xreadgroup(
                        GROUP, self.id, {key: ">"}, count=self.layer.read_count, block=self.block_ms
                    )
                    *acks, response = await pipe.execute(raise_on_error=False)
                    for result in (*acks, response):
                        if isinstance(result, Exception):
                            raise result
                    self.unacked[key].difference_update(done)
                    done = []
                entries = _entries(response)
                if recovering and not entries:
                    recovering = False
                    continue
                done = hand_over(entries)
                backoff = RETRY_MIN
            except ResponseError as exc:
                if not _stream_lost(exc):
                    logger.exception("process %s: reading %s failed", self.id, key)
                    await asyncio.sleep(RETRY_MAX)
                    recovering = True
                    continue
                done = []
                self.unacked.pop(key, None)
                if not wanted() or self.closed:
                    break  # nobody waits any more: do not bring a flushed stream back
                try:
                    await self._create_group(key, ttl_ms)
                except UNAVAILABLE_ERRORS:
                    await asyncio.sleep(backoff)
                recovering = False
            except UNAVAILABLE_ERRORS as exc:
                logger.warning(
                    "process %s: reading %s failed (%s); retrying in %.2f s",
                    self.id,
                    key,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
                recovering = True
            except Exception:
                # A reader that dies silently would stop all delivery to this process; an
                # entry that cannot be handed over is in ``unacked`` and is only acknowledged
                # on the next pass.
                logger.exception("process %s: handing over entries of %s failed", self.id, key)
                await asyncio.sleep(RETRY_MIN)
                recovering = True
        if done and not self.closed:
            # A fetcher that stops with acknowledgements owed pays them now; if this fails the
            # entries stay pending and the next fetcher's recovery acknowledges them.
            with contextlib.suppress(*UNAVAILABLE_ERRORS, ResponseError):
                await self._acknowledge(key, done)

    async def _acknowledge(self, key: str, ids: list[bytes]) -> None:
        pipe = self.client.pipeline()
        pipe.xack(key, GROUP, *ids)
        pipe.xdel(key, *ids)
        await pipe.execute()
        self.unacked[key].difference_update(ids)

    async def _create_group(self, key: str, ttl_ms: int) -> None:
        pipe = self.client.pipeline()
        pipe.xgroup_create(key, GROUP, id="0", mkstream=True)
        pipe.pexpire(key, ttl_ms, nx=True)
        created, _ = await pipe.execute(raise_on_error=False)
        if isinstance(created, ResponseError) and "BUSYGROUP" not in str(created):
            raise created

    def _fresh(
        self, key: str, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> tuple[list[bytes], list[tuple[float, dict[bytes, bytes]]]]:
        """All ids of a read (to acknowledge), and the entries to deliver with their deadline.

        Skipped: entries deleted while pending (no fields), entries handed over before an
        error, and entries older than the expiry (their id is the server's time of the XADD).
        """
        unacked = self.unacked[key]
        now = time.time()
        ids: list[bytes] = []
        fresh: list[tuple[float, dict[bytes, bytes]]] = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if not fields or entry_id in unacked:
                continue
            unacked.add(entry_id)
            deadline = _entry_ms(entry_id) / 1000 + self.layer.expiry
            if deadline > now:
                fresh.append((deadline, fields))
        return ids, fresh

    def _hand_over_inbox(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[bytes]:
        ids, fresh = self._fresh(self.inbox_key, entries)
        for deadline, fields in fresh:
            payload = fields.get(b"m")
            channels = fields.get(b"c")
            if payload is None or channels is None:
                logger.warning("process %s: inbox entry without channel or message", self.id)
                continue
            for channel in channels.decode().split(CHANNEL_SEPARATOR):
                self.deliver_local(channel, payload, deadline, strict=False)
        return ids

    def _hand_over_channel(
        self, key: str, channel: str, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> list[bytes]:
        ids, fresh = self._fresh(key, entries)
        if fresh:
            mailbox = self.prefetched.get(channel)
            if mailbox is None:
                mailbox = self.prefetched[channel] = Mailbox(self.layer.get_capacity(channel))
            for deadline, fields in fresh:
                payload = fields.get(b"m")
                if payload is not None:
                    mailbox.put(deadline, payload)
        return ids

    # --- background duties -------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Keep the alive key, inbox and full set alive; drop expired messages from mailboxes."""
        while not self.closed:
            await asyncio.sleep(self.layer.heartbeat_interval)
            try:
                pipe = self.client.pipeline()
                pipe.set(self.alive_key, b"1", px=self.ttl_ms)
                pipe.pexpire(self.inbox_key, self.ttl_ms)
                pipe.pexpire(self.full_key, self.ttl_ms)
                await pipe.execute()
            except UNAVAILABLE_ERRORS as exc:
                logger.warning("process %s: heartbeat failed: %s", self.id, exc)
            self._sweep()

    def _sweep(self) -> None:
        now = time.time()
        for channel, mailbox in list(self.local.items()):
            mailbox.purge_expired(now)
            if mailbox.marked_full and not mailbox.at_capacity:
                self.mark(channel, mailbox, full=False)
            self.forget_if_idle(self.local, channel, mailbox)
        for channel, mailbox in list(self.prefetched.items()):
            mailbox.purge_expired(now)
            self.forget_if_idle(self.prefetched, channel, mailbox)

    async def _publish_marks(self) -> None:
        """Mirror which local channels are full into the process's full set in Redis."""
        backoff = RETRY_MIN
        while not self.closed:
            await self.marks_wakeup.wait()
            self.marks_wakeup.clear()
            dirty, self.dirty_marks = self.dirty_marks, set()
            full = [c for c in dirty if (m := self.local.get(c)) is not None and m.marked_full]
            not_full = list(dirty.difference(full))
            try:
                pipe = self.client.pipeline()
                if full:
                    pipe.sadd(self.full_key, *full)
                if not_full:
                    pipe.srem(self.full_key, *not_full)
                pipe.pexpire(self.full_key, self.ttl_ms)
                await pipe.execute()
                backoff = RETRY_MIN
            except UNAVAILABLE_ERRORS as exc:
                logger.warning("process %s: publishing full channels failed: %s", self.id, exc)
                self.dirty_marks |= dirty
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
                self.marks_wakeup.set()

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
        for mailboxes in (self.local, self.prefetched):
            for channel, mailbox in list(mailboxes.items()):
                mailbox.clear()
                if mailbox.marked_full:
                    self.mark(channel, mailbox, full=False)
                self.forget_if_idle(mailboxes, channel, mailbox)
