"""Ending background loops on the first cancel, whatever the code below them does with it.

redis-py sends each command inside ``asyncio.wait_for``, which on Python 3.11 drops a
cancellation that arrives as the write completes (CPython gh-86296): the command goes on, and
the loop that awaited it would read on forever. ``asyncio.run`` (and so ``async_to_sync``)
cancels every task once at shutdown and waits for all of them, so one such loop hangs the whole
shutdown. A dropped cancellation still leaves the task's cancel count raised (nothing called
``uncancel``), and that is what every loop of the layer checks on each turn.
"""

from __future__ import annotations

import asyncio


def cancel_requested() -> bool:
    """Whether the running task was asked to stop (even if the cancel itself was lost)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelled() -> None:
    """Raise the CancelledError that code below the running task swallowed, if any."""
    if cancel_requested():
        raise asyncio.CancelledError
