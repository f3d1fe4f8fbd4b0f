"""Normal (cross-process) channels on the receiving side: a fetcher per channel reads the
channel's stream while receives wait here, into a mailbox of this process.

A normal channel is read through the consumer group by whichever processes receive on it, so
each message goes to one receiver. A fetcher reads while receives wait, and stops when none
do; what a cancelled receive leaves in the mailbox stays for the next receive on that channel
in this process. A fetcher also claims what the dead consumers of the channel left pending
(``StreamReader._claim``), and counts dead letters in ``keys.dead_letters``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from clusterlayer import keys
from clusterlayer.mailbox import Mailbox, forget_if_idle
from clusterlayer.streams import Fresh, StreamReader


class NormalChannels:
    """The mailboxes and fetchers of the normal channels this process receives on."""

    def __init__(
        self,
        reader: StreamReader,
        *,
        loop: asyncio.AbstractEventLoop,
        prefix: str,
        expiry_ms: int,
        get_capacity: Callable[[str], int],
    ) -> None:
        self.reader = reader
        self.loop = loop
        self.prefix = prefix
        self.expiry_ms = expiry_ms
        self.get_capacity = get_capacity
        self.mailboxes: dict[str, Mailbox] = {}
        self.fetchers: dict[str, asyncio.Task[None]] = {}

    async def receive(self, channel: str) -> bytes:
        mailbox = self._mailbox(channel)
        mailbox.receivers += 1
        try:
            if channel not in self.fetchers:
                self._start_fetcher(channel)
            return await mailbox.get()
        finally:
            mailbox.receivers -= 1
            forget_if_idle(self.mailboxes, channel, mailbox)

    def sweep(self, now: float) -> None:
        """Drop expired messages and forget idle mailboxes."""
        for channel, mailbox in list(self.mailboxes.items()):
            mailbox.purge_expired(now)
            forget_if_idle(self.mailboxes, channel, mailbox)

    def clear(self) -> None:
        """Empty every mailbox (flush)."""
        for channel, mailbox in list(self.mailboxes.items()):
            mailbox.clear()
            forget_if_idle(self.mailboxes, channel, mailbox)

    async def _fetch(self, channel: str) -> None:
        """Read a normal channel only while receivers here wait for more than is buffered."""
        key = keys.channel_stream(self.prefix, channel)

        def wanted() -> bool:
            mailbox = self.mailboxes.get(channel)
            return mailbox is not None and mailbox.receivers > len(mailbox)

        def deliver(fresh: list[Fresh]) -> None:
            if fresh:
                mailbox = self._mailbox(channel)
                for deadline, fields in fresh:
                    payload = fields.get(b"m")
                    if payload is not None:
                        mailbox.put(deadline, payload)

        try:
            await self.reader.consume(
                key,
                deliver,
                wanted,
                self.expiry_ms,
                dead_letters=keys.dead_letters(self.prefix, channel),
            )
        finally:
            if self.fetchers.get(channel) is asyncio.current_task():
                del self.fetchers[channel]
        # A receive that came while this fetcher was stopping (paying its last acknowledgement)
        # found it still registered, and waits on it: a new fetcher serves it.
        if wanted() and not self.reader.closed() and channel not in self.fetchers:
            self._start_fetcher(channel)

    def _start_fetcher(self, channel: str) -> None:
        self.fetchers[channel] = self.loop.create_task(
            self._fetch(channel), name=f"clusterlayer-fetch-{channel}"
        )

    def _mailbox(self, channel: str) -> Mailbox:
        mailbox = self.mailboxes.get(channel)
        if mailbox is None:
            mailbox = self.mailboxes[channel] = Mailbox(self.get_capacity(channel))
        return mailbox
