"""Process-local channels (``!``) on the receiving side: the mailboxes of this process's own
channels, and the full marks that tell other processes which of them are at capacity.

Capacity is applied per channel, on its mailbox. A mailbox that reaches capacity is marked
full, and the marks are mirrored, one pipeline per burst, into the process's full set in Redis,
where the send script of another process reads them. Messages get here from the inbox reader
(``inbox``) and, without touching Redis, from sends of this same process (``process``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from channels.exceptions import ChannelFull
from redis.asyncio.cluster import RedisCluster

from clusterlayer.cancel import raise_if_cancelled
from clusterlayer.errors import RETRY_MAX, RETRY_MIN, UNAVAILABLE_ERRORS
from clusterlayer.mailbox import Mailbox, forget_if_idle

logger = logging.getLogger(__name__)


class LocalChannels:
    """The mailboxes of one process's own channels, and the publisher of their full marks."""

    def __init__(
        self,
        client: RedisCluster,
        *,
        process_id: str,
        full_key: str,
        ttl_ms: int,
        get_capacity: Callable[[str], int],
        closed: Callable[[], bool],
    ) -> None:
        self.client = client
        self.process_id = process_id
        self.full_key = full_key
        self.ttl_ms = ttl_ms
        self.get_capacity = get_capacity
        self.closed = closed
        self.mailboxes: dict[str, Mailbox] = {}
        # Channels whose mark changed since the publisher last wrote the full set.
        self.dirty_marks: set[str] = set()
        self.marks_wakeup = asyncio.Event()

    def deliver(self, channel: str, payload: bytes, deadline: float, *, strict: bool) -> bool:
        """Put a message in a process-local channel's mailbox, within its capacity.

        ``strict`` (a send from this process) raises ChannelFull on a full mailbox; otherwise
        (the inbox reader, a group send) the message is dropped, and the channel is marked full
        so that other processes' sends are refused before they reach the inbox.
        """
        mailbox = self._mailbox(channel)
        if mailbox.at_capacity:
            mailbox.purge_expired(time.time())
        if mailbox.at_capacity:
            if strict:
                raise ChannelFull(channel)
            self._mark(channel, mailbox, full=True)
            logger.debug("process %s: channel %s full, message dropped", self.process_id, channel)
            return False
        mailbox.put(deadline, payload)
        if mailbox.at_capacity:
            self._mark(channel, mailbox, full=True)
        return True

    async def receive(self, channel: str) -> bytes:
        mailbox = self._mailbox(channel)
        try:
            return await mailbox.get()
        finally:
            if mailbox.marked_full and not mailbox.at_capacity:
                self._mark(channel, mailbox, full=False)
            forget_if_idle(self.mailboxes, channel, mailbox)

    def sweep(self, now: float) -> None:
        """Drop expired messages, unmark channels back under capacity, forget idle mailboxes."""
        for channel, mailbox in list(self.mailboxes.items()):
            mailbox.purge_expired(now)
            if mailbox.marked_full and not mailbox.at_capacity:
                self._mark(channel, mailbox, full=False)
            forget_if_idle(self.mailboxes, channel, mailbox)

    def clear(self) -> None:
        """Empty every mailbox (flush)."""
        for channel, mailbox in list(self.mailboxes.items()):
            mailbox.clear()
            if mailbox.marked_full:
                self._mark(channel, mailbox, full=False)
            forget_if_idle(self.mailboxes, channel, mailbox)

    async def publish_marks(self) -> None:
        """Mirror which local channels are full into the process's full set in Redis."""
        backoff = RETRY_MIN
        while not self.closed():
            raise_if_cancelled()
            await self.marks_wakeup.wait()
            self.marks_wakeup.clear()
            dirty, self.dirty_marks = self.dirty_marks, set()
            full = [c for c in dirty if (m := self.mailboxes.get(c)) is not None and m.marked_full]
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
                logger.warning(
                    "process %s: publishing full channels failed: %s", self.process_id, exc
                )
                self.dirty_marks |= dirty
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
                self.marks_wakeup.set()

    def _mailbox(self, channel: str) -> Mailbox:
        mailbox = self.mailboxes.get(channel)
        if mailbox is None:
            mailbox = self.mailboxes[channel] = Mailbox(self.get_capacity(channel))
        return mailbox

    def _mark(self, channel: str, mailbox: Mailbox, *, full: bool) -> None:
        if mailbox.marked_full != full:
            mailbox.marked_full = full
            self.dirty_marks.add(channel)
            self.marks_wakeup.set()
