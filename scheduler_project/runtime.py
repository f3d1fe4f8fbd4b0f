"""This process as a scheduler instance: its id, its draining flag and its background duties.

Daphne offers no start-up hook, so the duties start with the first consumer or request that
asks for the runtime, on the loop that serves it (one per process under daphne; tests may run
several loops, each gets its own runtime). Each duty runs in a loop of its own; a failing round
is logged and retried, so one bad round never stops a duty.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from django.conf import settings

from hotstate.errors import DependencyDown
from scheduler_project.credentials import id_new

logger = logging.getLogger(__name__)

INSTANCE_ID = id_new(prefix="i")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Duty:
    """A background job of the process: ``run`` is called every ``interval_s`` seconds."""

    name: str
    interval_s: float
    run: Callable[[], Awaitable[None]]


@dataclass
class Runtime:
    instance_id: str
    loop: asyncio.AbstractEventLoop
    draining: bool = False
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    started: bool = False
    stopping: bool = False
    # Duties in the middle of a round (between two sleeps).
    busy: set[str] = field(default_factory=set)

    @property
    def heartbeat_interval_ms(self) -> int:
        return int(settings.HEARTBEAT_INTERVAL_MS)

    def start(self, duties: list[Duty]) -> None:
        if self.started:
            return
        self.started = True
        for duty in duties:
            # A fresh context: the runtime may start inside a consumer's call, whose context
            # carries asgiref's per-request executor; a duty's database calls must not use it
            # (it is gone once that consumer ends).
            self.tasks[duty.name] = self.loop.create_task(
                _run_forever(duty, self), name=f"duty:{duty.name}", context=contextvars.Context()
            )

    async def stop(self, *, within: float = 5.0) -> None:
        """Stop every duty. On Python 3.11 ``asyncio.wait_for`` (inside redis-py) can swallow a
        cancellation (CPython gh-86296), so the duties also watch ``stopping`` and the cancel is
        repeated until they are gone."""
        self.stopping = True
        deadline = self.loop.time() + within
        # Let rounds in progress finish: a duty cancelled mid-command may still have its command
        # run by Redis after whoever stopped it moved on (and, in tests, cleaned up).
        while self.busy and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        tasks = [task for task in self.tasks.values() if not task.done()]
        while tasks and self.loop.time() < deadline:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.2)
            tasks = [task for task in tasks if not task.done()]
        if tasks:
            logger.warning("duties %s did not stop", [task.get_name() for task in tasks])
        self.tasks.clear()
        self.started = False


async def _run_forever(duty: Duty, runtime: Runtime) -> None:
    failures = 0
    while not runtime.stopping:
        started = time.monotonic()
        runtime.busy.add(duty.name)
        try:
            await duty.run()
            failures = 0
        except asyncio.CancelledError:
            raise
        except DependencyDown as exc:
            failures += 1
            if failures == 1 or failures % 30 == 0:
                logger.warning("duty %s: Redis unavailable (%s)", duty.name, exc)
        except Exception:
            failures += 1
            logger.exception("duty %s failed", duty.name)
        finally:
            runtime.busy.discard(duty.name)
        elapsed = time.monotonic() - started
        # Back off while failing, up to 5 s, so a down cluster is not hammered.
        backoff = min(5.0, duty.interval_s * (2 ** min(failures, 6))) if failures else 0.0
        await asyncio.sleep(max(0.0, duty.interval_s - elapsed) + backoff)


_runtimes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Runtime] = (
    weakref.WeakKeyDictionary()
)


def runtime_peek() -> Runtime | None:
    """The running loop's runtime if anything started it (for shutdown paths)."""
    return _runtimes.get(asyncio.get_running_loop())


def runtime_get() -> Runtime:
    """The runtime of the running loop, with its duties started."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is None:
        runtime = Runtime(instance_id=INSTANCE_ID, loop=loop)
        _runtimes[loop] = runtime
        from scheduler_project.duties import process_duties

        runtime.start(process_duties())
    return runtime
