"""Draining an instance: stop taking work, send every peer elsewhere, then exit.

``serve`` sends SIGUSR1 to an instance it stops (or an operator does). The instance then:

1. marks itself draining: /readyz answers 503 and new sockets are closed with 1012;
2. closes every open socket with 1012, so nodes and sessions reconnect to another instance
   (nodes keep running their jobs and report them there; sessions resume and get their
   results from the outbox; in-flight submits are retried by request_id and land on the same
   job);
3. waits for the sockets to go (bounded), stops its duties (each flushes what it batches,
   such as the job history) and unregisters, so senders see at once that it is gone;
4. stops daphne, and exits as soon as daphne returns (or ``EXIT_GRACE_S`` later if it does
   not), without waiting for threads that wait for the stopped loop (``_exit_now``).

Daphne on SIGTERM alone would cancel the consumers without running ``disconnect``, so none of
this relies on SIGTERM: the drain closes the sockets itself first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from core.consumers import live_sockets
from core.runtime import INSTANCE_ID, runtime_get
from hotstate import instances
from protocol import CloseCode

logger = logging.getLogger(__name__)

# How long daphne may take to stop after the drain before the process exits without it.
EXIT_GRACE_S = 3.0


async def instance_drain(*, grace_s: float | None = None, exit_process: bool = True) -> None:
    runtime = runtime_get()
    if runtime.draining:
        return
    runtime.draining = True
    grace = settings.DRAIN_GRACE if grace_s is None else grace_s
    live = live_sockets()
    logger.warning("instance %s draining: closing %s sockets with 1012", INSTANCE_ID, len(live))
    closers = [
        asyncio.ensure_future(consumer.close_with(CloseCode.SERVICE_RESTART))
        for consumer in list(live)
    ]
    for outcome in await asyncio.gather(*closers, return_exceptions=True):
        if isinstance(outcome, BaseException):
            logger.error("instance %s: closing a socket failed: %r", INSTANCE_ID, outcome)
    deadline = runtime.loop.time() + grace
    # A bounded poll: sockets leave through their disconnect, or vanish with their consumer.
    while live and runtime.loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    for consumer in list(live):
        logger.warning(
            "instance %s: %s still open (authenticated=%s closing=%s)",
            INSTANCE_ID,
            type(consumer).__name__,
            consumer.authenticated,
            consumer.closing,
        )
    if live:
        logger.warning(
            "instance %s: %s sockets still open after %ss", INSTANCE_ID, len(live), grace
        )
    await runtime.stop()
    try:
        await instances.instance_unregister(instance_id=INSTANCE_ID)
    except Exception:
        logger.exception("instance %s: could not unregister", INSTANCE_ID)
    await _close_channel_layer()
    logger.warning("instance %s drained", INSTANCE_ID)
    if exit_process:
        _exit_before_joining_threads()
        threading.Thread(target=_exit_later, name="drain-exit", daemon=True).start()
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_before_joining_threads() -> None:
    """Exit as soon as daphne returns, before the interpreter joins its worker threads.

    An HTTP request that arrives while daphne stops (a load balancer's /readyz probe learning of
    the drain) can stay parked in an asgiref executor thread, waiting for the stopped loop; the
    interpreter's exit joins that thread (``concurrent.futures``' exit hook) forever, so the
    process would never end, not even on a second SIGTERM. Threading's exit hooks run last
    registered first, so this one runs before that join. Everything the drain owes is done by
    now: leaving without the rest of the interpreter's shutdown loses nothing.
    """
    register = getattr(threading, "_register_atexit", None)  # CPython's, since 3.9
    if register is not None:
        register(_exit_now, "daphne stopped")


def _exit_later() -> None:
    """Exit if daphne has not stopped by itself within EXIT_GRACE_S."""
    time.sleep(EXIT_GRACE_S)
    _exit_now("daphne did not stop")


def _exit_now(why: str) -> None:
    logger.warning("instance %s: %s; exiting", INSTANCE_ID, why)
    logging.shutdown()
    os._exit(0)


async def _close_channel_layer() -> None:
    layer: Any = get_channel_layer()
    close = getattr(layer, "close", None)
    if close is not None:
        try:
            await close()
        except Exception:
            logger.exception("instance %s: channel layer close failed", INSTANCE_ID)


def install_drain_signal() -> None:
    """Under daphne: SIGUSR1 starts the drain on daphne's event loop."""
    server = sys.modules.get("daphne.server")
    if server is None:  # not under daphne (tests, management commands): nothing to install
        return
    loop: asyncio.AbstractEventLoop = server.twisted_loop

    def on_signal(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(lambda: loop.create_task(instance_drain()))

    signal.signal(signal.SIGUSR1, on_signal)
