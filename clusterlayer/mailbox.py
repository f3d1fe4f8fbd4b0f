"""The in-process queue of one channel: where messages wait for ``receive``.

A mailbox holds serialized messages with their expiry deadline. ``get`` is cancellation-safe in
the way :class:`asyncio.Queue` is: a waiter is only woken, never handed the message, so a
receive cancelled after its wake-up leaves the message in the mailbox and passes the wake-up on
to the next waiter. A message is only ever taken by a coroutine that is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque


class Mailbox:
    __slots__ = ("capacity", "items", "marked_full", "receivers", "waiters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[tuple[float, bytes]] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        # receive() calls in progress; for a normal channel this is what the fetcher serves.
        self.receivers = 0
        # Whether other processes have been told (through Redis) that this channel is full.
        self.marked_full = False

    def __len__(self) -> int:
        return len(self.items)

    @property
    def at_capacity(self) -> bool:
        return len(self.items) >= self.capacity

    @property
    def idle(self) -> bool:
        return not self.items and not self.waiters and not self.receivers and not self.marked_full

    def put(self, deadline: float, payload: bytes) -> None:
        self.items.append((deadline, payload))
        self._wake_one()

    def purge_expired(self, now: float) -> None:
        """Drop messages whose deadline has passed; they are in arrival order, so from the left."""
        while self.items and self.items[0][0] <= now:
            self.items.popleft()

    def clear(self) -> None:
        self.items.clear()

    async def get(self) -> bytes:
        """The oldest unexpired message, waiting for one if there is none."""
        loop = asyncio.get_running_loop()
        while True:
            while not self.items:
                waiter: asyncio.Future[None] = loop.create_future()
                self.waiters.append(waiter)
                try:
                    await waiter
                except BaseException:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(waiter)
                    # Woken and then cancelled before running: the message is still here,
                    # so the wake-up goes to the next waiter instead of being lost.
                    if self.items and not waiter.cancelled():
                        self._wake_one()
                    raise
            deadline, payload = self.items.popleft()
            if deadline > time.time():
                return payload

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def forget_if_idle(mailboxes: dict[str, Mailbox], channel: str, mailbox: Mailbox) -> None:
    """Drop ``channel``'s mailbox from ``mailboxes`` once nothing waits in it or on it."""
    if mailbox.idle and mailboxes.get(channel) is mailbox:
        del mailboxes[channel]
