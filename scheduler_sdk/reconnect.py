"""The reconnect loop of ``NodeAgent`` and ``SessionClient``: one connection after another, with a
backoff delay between them, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from scheduler_sdk.backoff import Backoff

logger = logging.getLogger(__name__)


async def stay_connected(
    connection: Callable[[], Awaitable[bool]],
    *,
    peer: str,
    url: str,
    ident: Callable[[], str | None],
    stop: asyncio.Event,
    backoff: Backoff,
    rng: random.Random,
    on_delay: Callable[[float], None] | None = None,
) -> None:
    """Run ``connection()`` again and again until ``stop`` is set.

    1. ``connection()`` lives through one connection and returns whether it got as far as the
       scheduler's welcome (``node_registered``, ``session_ready``); that resets the count of
       failures in a row.
    2. A refused, failed or dropped connection (``OSError``, ``TimeoutError``, a failed
       handshake, a close) is logged; anything else it raises (``Unauthorized``, ``Replaced``)
       ends the loop.
    3. Unless ``stop`` is set, wait ``backoff.delay(failures)`` (``on_delay`` is told it) or until
       ``stop``, whichever comes first, and go again.

    ``peer`` ("node", "session") and ``ident()`` (its id, once known) name it in the log.
    """
    failures = 0
    while not stop.is_set():
        welcomed = False
        try:
            welcomed = await connection()
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            logger.warning("%s connection to %s failed: %r", peer, url, exc)
        if welcomed:
            failures = 0
        if stop.is_set():
            break
        delay = backoff.delay(failures, rng)
        failures += 1
        if on_delay is not None:
            on_delay(delay)
        logger.info("%s %s reconnecting in %.2f s", peer, ident(), delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
