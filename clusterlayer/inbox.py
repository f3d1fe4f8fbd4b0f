"""The process's inbox: the one stream, tagged by the process, that carries the messages for
all of its process-local channels, and the reader that empties it into their mailboxes.

One inbox entry names one or more channels of the process (a group send writes one entry for
all its members there), and the reader hands its message to each of their mailboxes. The read
loop itself, with its acknowledgement and recovery, is the ``streams`` reader's.
"""

from __future__ import annotations

import logging

from clusterlayer.local import LocalChannels
from clusterlayer.streams import Fresh, StreamReader

logger = logging.getLogger(__name__)

# Channel names cannot contain a space, so it separates the channels of one inbox entry (the
# deliver_inbox script joins them with it).
CHANNEL_SEPARATOR = " "


class Inbox:
    """The reader of one process's inbox."""

    def __init__(
        self,
        reader: StreamReader,
        local: LocalChannels,
        *,
        key: str,
        ttl_ms: int,
        process_id: str,
    ) -> None:
        self.reader = reader
        self.local = local
        self.key = key
        self.ttl_ms = ttl_ms
        self.process_id = process_id

    async def read(self) -> None:
        """The one reader of this process's inbox, for the life of the process.

        It reads in batches (``StreamReader.consume``), hands each entry to the mailboxes of its
        channels (a full mailbox drops it and gets marked full), and acknowledges and deletes
        the batch with its next read. A lost inbox (flushed, or expired while the heartbeat
        could not reach Redis) is recreated with the process TTL.
        """
        await self.reader.consume(self.key, self.deliver, lambda: True, self.ttl_ms)

    def deliver(self, fresh: list[Fresh]) -> None:
        for deadline, fields in fresh:
            payload = fields.get(b"m")
            channels = fields.get(b"c")
            if payload is None or channels is None:
                logger.warning(
                    "process %s: inbox entry without channel or message", self.process_id
                )
                continue
            for channel in channels.decode().split(CHANNEL_SEPARATOR):
                self.local.deliver(channel, payload, deadline, strict=False)
