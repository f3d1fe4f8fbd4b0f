"""The layer facade: ``ClusterChannelLayer``, the object Channels calls.

It checks the configuration and the arguments of each call, serializes messages, and hands each
call to the ``Process`` of the running event loop (``process``). How a message travels
(docs/channel-layer.md has the whole design, and the module each part lives in):

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
import itertools
import os
import re
import secrets
import socket
from collections import deque
from typing import Any

from channels.layers import BaseChannelLayer
from channels_redis.serializers import registry
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from clusterlayer.loops import on_close
from clusterlayer.process import Process, process_of

PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class ClusterChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    """Channels layer on Redis Cluster Streams; every option is keyword-only (Channels CONFIG).

    ``url``: any node of the cluster. ``prefix``: of every key (several layers can share one
    cluster). ``expiry``: seconds a message may wait unread. ``group_expiry``: seconds a group
    membership lives after its last ``group_add``. ``capacity`` / ``channel_capacity``: most
    messages waiting per channel (``channel_capacity`` maps glob patterns or compiled regexes to
    capacities). ``inbox_capacity``: most undelivered messages in one process's inbox.
    ``process_ttl`` / ``heartbeat_interval``: how long a silent process counts as alive, and how
    often it says it is. ``block_timeout``: seconds one XREADGROUP waits (must stay below
    ``socket_timeout``). ``read_count``: most entries per read. ``consumer_name``: this
    process's name in the consumer groups, stable across restarts if the deployment has one
    (default ``<hostname>-<pid>``); unique among running processes. ``claim_idle``: seconds a
    normal channel's entry may stay unacknowledged before another process takes it over
    (default ``process_ttl``). ``max_deliveries``: deliveries after which such an entry is
    dropped as a dead letter.
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
        consumer_name: str | None = None,
        claim_idle: float | None = None,
        max_deliveries: int = 3,
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
        claim_idle = process_ttl if claim_idle is None else claim_idle
        if claim_idle <= 0 or max_deliveries < 1:
            raise ValueError("claim_idle and max_deliveries must be positive")
        self.url = url
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.inbox_capacity = inbox_capacity
        self.process_ttl = process_ttl
        self.heartbeat_interval = heartbeat_interval
        self.block_timeout = block_timeout
        self.read_count = read_count
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self.socket_timeout = socket_timeout
        self.socket_connect_timeout = socket_connect_timeout
        self.client_options = dict(client_options or {})
        self._serializer = registry.get_serializer(
            serializer_format,
            random_prefix_length=0,
            expiry=expiry,
            symmetric_encryption_keys=symmetric_encryption_keys,
        )
        self._processes: dict[asyncio.AbstractEventLoop, Process] = {}
        # Ids of this layer's processes whose loop closed (recent ones), for receive's error.
        self._closed_ids: deque[str] = deque(maxlen=1000)

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
            payload = await process.normal.receive(channel)
        elif process.owns(owner):
            payload = await process.local.receive(channel)
        else:
            raise ValueError(self._foreign_channel(channel, owner))
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
        """Stop this event loop's reader and heartbeat, unregister, and close the client.

        Also done by itself when the loop closes.
        """
        await self._close_loop(asyncio.get_running_loop())

    # --- Groups extension -------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._process().groups.add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._process().groups.discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send to every member; full channels drop the message, gone processes are pruned."""
        self._require_message(message)
        self.require_valid_group_name(group)
        groups = self._process().groups
        members = await groups.members(group)
        if members:
            await groups.send(group, members, self.serialize(message))

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

    def _process(self) -> Process:
        """This event loop's incarnation of the layer (redis-py connections are per loop).

        It is closed, with its client, when its loop closes (``loops``), so that every
        ``async_to_sync`` call from sync code does not leave a client behind.
        """
        loop = asyncio.get_running_loop()
        process = self._processes.get(loop)
        if process is None:
            # Loops that closed without the hook (one that cannot be wrapped) are only dropped.
            for stale in [other for other in self._processes if other.is_closed()]:
                del self._processes[stale]
            slots = {other.slot for other in self._processes.values()}
            slot = next(n for n in itertools.count() if n not in slots)
            process = self._processes[loop] = Process(self, loop, slot)
            on_close(loop, lambda: self._close_loop(loop))
        return process

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        process = self._processes.pop(loop, None)
        if process is not None:
            self._closed_ids.append(process.id)
            await process.close()

    def _foreign_channel(self, channel: str, owner: str) -> str:
        """Why ``receive`` refuses a process-local channel of another process (the error).

        A process-local channel lives in the mailboxes of the event loop whose ``new_channel``
        made it (docs/channel-layer.md, "Event loops"): other loops of this layer, even in the
        same OS process, cannot receive on it.
        """
        rule = (
            "a process-local channel can only be received on the event loop (and layer "
            "instance) whose new_channel() made it; use a normal channel (no '!') to share "
            "messages between loops"
        )
        if any(process.id == owner for process in self._processes.values()):
            return f"{channel!r} belongs to another event loop of this layer: {rule}"
        if owner in self._closed_ids:
            return (
                f"{channel!r} was made on an event loop of this layer that has closed (as each "
                f"async_to_sync call's loop does), and went with it: {rule}"
            )
        return f"{channel!r} is not a channel of this process: {rule}"

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
