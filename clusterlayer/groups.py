"""Groups: their membership in Redis, and what ``group_send`` does with members that cannot
take a message.

A group is a sorted set of channel names on the group's slot, scored by the time of their last
``group_add``; members older than ``group_expiry`` are removed before each send. A member whose
channel is full misses the message (counted, logged at INFO, never raised); a member whose
process no longer heartbeats is removed from the group, which is how the channels of dead
processes are pruned. Which channel lives where is the process's business (``fan_out``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio.cluster import RedisCluster

from clusterlayer import keys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FanOut:
    """What became of one message sent to many channels."""

    gone: list[str]  # channels whose process no longer heartbeats
    dropped: int  # channels that were at capacity
    error: BaseException | None  # the first error of a write, if any


class Groups:
    """The groups of one layer prefix, as one process reads and writes them."""

    def __init__(
        self,
        client: RedisCluster,
        *,
        prefix: str,
        group_expiry: float,
        fan_out: Callable[[list[str], bytes], Awaitable[FanOut]],
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.fan_out = fan_out

    async def add(self, group: str, channel: str) -> None:
        key = keys.group(self.prefix, group)
        pipe = self.client.pipeline()
        pipe.zadd(key, {channel: time.time()})
        # Every member is younger than group_expiry, so the whole set may go after that.
        pipe.pexpire(key, int(self.group_expiry * 1000))
        await pipe.execute()

    async def discard(self, group: str, channel: str) -> None:
        await self.client.zrem(keys.group(self.prefix, group), channel)

    async def members(self, group: str) -> list[str]:
        """The group's channels, after removing those older than ``group_expiry``."""
        key = keys.group(self.prefix, group)
        pipe = self.client.pipeline()
        pipe.zremrangebyscore(key, "-inf", time.time() - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        return [member.decode() for member in members]

    async def send(self, group: str, channels: list[str], payload: bytes) -> None:
        """Send ``payload`` to the group's ``channels``; remove those of gone processes."""
        result = await self.fan_out(channels, payload)
        if result.gone:
            await self.client.zrem(keys.group(self.prefix, group), *result.gone)
            logger.info(
                "group %s: removed %d channel(s) of gone processes", group, len(result.gone)
            )
        if result.dropped:
            logger.info(
                "group %s: %d of %d channel(s) over capacity missed a message",
                group,
                result.dropped,
                len(channels),
            )
        if result.error is not None:
            raise result.error
