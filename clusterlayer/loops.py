"""Work to do on an event loop just before it closes: the layer's processes (and their clients)
belong to one loop and must go with it.

``async_to_sync`` runs each call on a new loop (``asyncio.run``), so sync code that sends through
the layer makes a process per call; without this, each would leave its client's connections
open. As channels_redis does, the loop's ``close`` is wrapped: before the real close, the hooks
run on the loop, which by then has stopped (``asyncio.run`` has cancelled its tasks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]
_ATTRIBUTE = "_clusterlayer_close_hooks"


def on_close(loop: asyncio.AbstractEventLoop, hook: Hook) -> None:
    """Run ``hook()`` on ``loop`` when ``loop.close()`` is called, before it really closes.

    The hooks live on the loop itself (not in a registry keyed by it), so a loop that is
    dropped without being closed is not kept alive by them.
    """
    hooks: list[Hook] | None = getattr(loop, _ATTRIBUTE, None)
    if hooks is None:
        hooks = []
        try:
            setattr(loop, _ATTRIBUTE, hooks)
        except AttributeError:  # a loop without instance attributes (uvloop): no hook
            logger.debug("cannot hook the close of %r", loop)
            return
        _wrap_close(loop, hooks)
    hooks.append(hook)


def _wrap_close(loop: asyncio.AbstractEventLoop, hooks: list[Hook]) -> None:
    original = loop.close

    def close() -> None:
        # A running loop refuses to close (the original raises): keep the hooks for later.
        if _can_run(loop):
            while hooks:
                hook = hooks.pop(0)
                try:
                    loop.run_until_complete(hook())
                except (Exception, asyncio.CancelledError):
                    logger.exception("closing the channel layer with its event loop failed")
        original()

    setattr(loop, "close", close)  # noqa: B010 (mypy forbids assigning to a method)


def _can_run(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` can run a coroutine to completion here: it is neither running nor
    closed, and no other loop runs in this thread (closing one loop from inside another)."""
    if loop.is_running() or loop.is_closed():
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False
