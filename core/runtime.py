"""This process as a scheduler instance: its id, its draining flag and its background duties.

Apps register their duties with ``DUTIES`` from their ``AppConfig.ready()``; ``core`` knows
none of them. Daphne offers no start-up hook, so the duties start with the first consumer or
request that asks for the runtime, on the loop that serves it (one per process under daphne;
tests may run several loops, each gets its own runtime). Each duty runs in a loop of its own; a
failing round is logged and retried, so one bad round never stops a duty.
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

from core.credentials import id_new
from core.state import STATE
from hotstate import instances
from hotstate.errors import DependencyDown

logger = logging.getLogger(__name__)

INSTANCE_ID = id_new(prefix="i")
# An instance silent this long is gone for senders and the dashboard.
INSTANCE_TTL_MS = 10_000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Duty:
    """A background job of the process: ``run`` is called every ``interval_s`` seconds.

    ``shared``: work any one process may do for all (timers, reports, clean-up); processes in
    the ``instance`` role leave it to the workers. ``on_stop``: called once when the runtime
    stops, after the last round (e.g. to flush what the duty batches).
    """

    name: str
    interval_s: float
    run: Callable[[], Awaitable[object]]
    shared: bool = False
    on_stop: Callable[[], Awaitable[object]] | None = None


class DutyRegistry:
    """The duties apps registered, by name. Filled at start-up, read when a runtime starts."""

    def __init__(self) -> None:
        self._duties: dict[str, Duty] = {}

    def register(self, duty: Duty) -> None:
        if self._duties.get(duty.name, duty) != duty:
            raise ValueError(f"another duty is already registered as {duty.name!r}")
        self._duties[duty.name] = duty

    def for_role(self, role: str | None = None) -> list[Duty]:
        """The duties of a process in ``role`` (default: SCHEDULER_ROLE)."""
        role = role or settings.SCHEDULER_ROLE
        return [duty for duty in self._duties.values() if role != "instance" or not duty.shared]


DUTIES = DutyRegistry()


@dataclass
class Runtime:
    instance_id: str
    loop: asyncio.AbstractEventLoop
    draining: bool = False
    duties: list[Duty] = field(default_factory=list)
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
        self.duties = list(duties)
        for duty in duties:
            # A fresh context: the runtime may start inside a consumer's call, whose context
            # carries asgiref's per-request executor; a duty's database calls must not use it
            # (it is gone once that consumer ends).
            self.tasks[duty.name] = self.loop.create_task(
                _run_forever(duty, self), name=f"duty:{duty.name}", context=contextvars.Context()
            )

    async def stop(self, *, within: float = 5.0) -> None:
        """Stop every duty. A duty's loop ends on the first cancel even if its round swallowed
        it (``_run_forever``); the cancel is still repeated until the tasks are gone."""
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
        for duty in self.duties:
            if duty.on_stop is not None:
                try:
                    await duty.on_stop()
                except Exception:
                    logger.exception("duty %s: final round failed", duty.name)
        self.tasks.clear()
        self.started = False


def _cancel_requested() -> bool:
    """Whether this task was asked to stop, even if the CancelledError itself was swallowed
    below it (redis-py's ``asyncio.wait_for`` drops one that arrives as a write completes,
    CPython gh-86296): the task's cancel count stays raised, since nothing uncancelled it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _run_forever(duty: Duty, runtime: Runtime) -> None:
    """Run ``duty`` round after round until the runtime stops or the task is cancelled.

    The loop ends on the first cancel, whatever the round did with it: ``asyncio.run`` (and
    test teardown) cancel each task once and then wait for it.
    """
    failures = 0
    while not runtime.stopping:
        if _cancel_requested():
            raise asyncio.CancelledError
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
        if _cancel_requested():
            raise asyncio.CancelledError
        elapsed = time.monotonic() - started
        # Back off while failing, up to 5 s, so a down cluster is not hammered.
        backoff = min(5.0, duty.interval_s * (2 ** min(failures, 6))) if failures else 0.0
        await asyncio.sleep(max(0.0, duty.interval_s - elapsed) + backoff)


class Runtimes(weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Runtime]):
    """The process's runtimes, one per event loop that asked for one (a part of ``STATE``)."""


def runtime_peek() -> Runtime | None:
    """The running loop's runtime if anything started it (for shutdown paths)."""
    return STATE.part(Runtimes).get(asyncio.get_running_loop())


def runtime_get() -> Runtime:
    """The runtime of the running loop, with its duties started."""
    loop = asyncio.get_running_loop()
    runtimes = STATE.part(Runtimes)
    runtime = runtimes.get(loop)
    if runtime is None:
        runtime = runtimes[loop] = Runtime(instance_id=INSTANCE_ID, loop=loop)
        runtime.start(DUTIES.for_role())
    return runtime


async def instance_heartbeat() -> None:
    """Keep this process listed as alive (a duty of every process)."""
    await instances.instance_register(instance_id=INSTANCE_ID, ttl_ms=INSTANCE_TTL_MS)
