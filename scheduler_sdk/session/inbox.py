"""What a session receives for its caller: final results, and the events of ``events()``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import protocol as p
from scheduler_sdk.errors import SdkError

SessionEvent = p.SessionJobProgress | p.SessionJobResult | p.Error
"""What ``events()`` yields: progress, final results, and errors not tied to a request."""
MAX_KEPT_RESULTS = 10_000

_CLOSED = object()


class Inbox:
    """Final results until ``result()`` claims them (the latest ``MAX_KEPT_RESULTS`` unclaimed
    ones are kept), and one queue per ``events()`` iterator."""

    def __init__(self) -> None:
        self._results: dict[str, asyncio.Future[p.SessionJobResult]] = {}
        self._subscribers: set[asyncio.Queue[object]] = set()

    async def result(
        self, job_id: str, timeout_s: float | None, *, check_usable: Callable[[], None]
    ) -> p.SessionJobResult:
        """The final result of ``job_id``, at once if it already arrived; before waiting for one
        that has not, ``check_usable()`` may refuse."""
        future = self._results.get(job_id)
        if future is None:
            check_usable()
            future = asyncio.get_running_loop().create_future()
            self._results[job_id] = future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        finally:
            if future.done():
                self._results.pop(job_id, None)

    def keep(self, result: p.SessionJobResult) -> None:
        future = self._results.get(result.job_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._results[result.job_id] = future
        if not future.done():
            future.set_result(result)
        if len(self._results) > MAX_KEPT_RESULTS:
            # Oldest first (dicts keep insertion order); unclaimed results only.
            excess = len(self._results) - MAX_KEPT_RESULTS
            for job_id in [j for j, f in self._results.items() if f.done()][:excess]:
                del self._results[job_id]

    def events(self) -> AsyncIterator[SessionEvent]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._subscribers.add(queue)
        return self._events(queue)

    def publish(self, event: SessionEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    def fail(self, failure: SdkError) -> None:
        """End every wait for a result with ``failure``, and every ``events()`` iterator."""
        for future in self._results.values():
            if not future.done():
                future.set_exception(failure)
                future.exception()  # a future nobody awaits must not warn at exit
        for queue in self._subscribers:
            queue.put_nowait(_CLOSED)

    async def _events(self, queue: asyncio.Queue[object]) -> AsyncIterator[SessionEvent]:
        try:
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                yield item  # type: ignore[misc]
        finally:
            self._subscribers.discard(queue)
