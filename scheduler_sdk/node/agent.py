"""``NodeAgent``: the node's life cycle and its connection to the scheduler.

It registers, dispatches the scheduler's frames to its collaborators and reconnects; the job
table (``jobs``), the outbox (``outbox``), the heartbeats (``heartbeat``) and the reconnect loop
(``scheduler_sdk.reconnect``) do the rest.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import protocol as p
from scheduler_sdk.backoff import Backoff
from scheduler_sdk.errors import Replaced, SdkError, Unauthorized
from scheduler_sdk.node.heartbeat import Heartbeats, Load, ResourceProbe
from scheduler_sdk.node.job import Handler
from scheduler_sdk.node.jobs import JobTable
from scheduler_sdk.node.outbox import Outbox
from scheduler_sdk.node.stats import NodeStats, Violation
from scheduler_sdk.reconnect import stay_connected
from scheduler_sdk.version import __version__

logger = logging.getLogger(__name__)

HandlerT = TypeVar("HandlerT", bound=Handler)

DEFAULT_MAX_FRAME_BYTES = 1 << 20


class NodeAgent:
    """A node: registers with the scheduler and runs the jobs it is assigned.

    ``services`` are the service ids (or ``ServiceRef`` with a version) to advertise; each needs
    a handler, given in ``handlers`` or with ``@agent.handler(service_id)``. A handler is
    ``async def handler(job: Job) -> dict`` and may raise ``JobFailed`` or ``ModelNotAvailable``.
    ``resources`` replaces the psutil probe (a simulator reports made-up load with it);
    ``gpu_pct`` adds a GPU figure to the default probe. ``on_violation`` is called (and must not
    block) when the scheduler assigns more than ``max_jobs`` at once.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        services: Iterable[str | p.ServiceRef],
        features: Iterable[str] = (),
        max_jobs: int = 1,
        region: str | None = None,
        handlers: Mapping[str, Handler] | None = None,
        version: str = f"scheduler-sdk/{__version__}",
        resources: ResourceProbe | None = None,
        gpu_pct: Callable[[], float | None] | None = None,
        on_violation: Callable[[Violation], None] | None = None,
        backoff: Backoff | None = None,
        register_timeout_s: float = 10.0,
        deadline_grace_s: float | None = 30.0,
        progress_interval_s: float = 0.1,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        connect_kwargs: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.url = url
        self._token = token
        self.services = [s if isinstance(s, p.ServiceRef) else p.ServiceRef(id=s) for s in services]
        self.features = list(features)
        self.max_jobs = max_jobs
        self.region = region
        self.version = version
        self._backoff = backoff or Backoff()
        self._register_timeout_s = register_timeout_s
        self._connect_kwargs: dict[str, Any] = {"compression": None, **(connect_kwargs or {})}
        self._rng = rng or random.Random()

        self.stats = NodeStats()
        self.node_id: str | None = None
        self.instance_id: str | None = None
        self.heartbeat_interval_ms: int | None = None
        self._outbox = Outbox(self.stats)
        self._jobs = JobTable(
            handlers=dict(handlers or {}),
            max_jobs=max_jobs,
            outbox=self._outbox,
            stats=self.stats,
            on_violation=on_violation,
            deadline_grace_s=deadline_grace_s,
            progress_interval_s=progress_interval_s,
            max_frame_bytes=max_frame_bytes,
            node_id=lambda: self.node_id,
        )
        self._load = Load(resources, gpu_pct)
        self._heartbeats = Heartbeats(
            load=self._load,
            held=lambda: self._jobs.ids,
            outbox=self._outbox,
            stats=self.stats,
            rng=self._rng,
        )
        self._live_ws: ClientConnection | None = None  # set while connected at all
        self._registered = asyncio.Event()
        self._stop = asyncio.Event()
        self._draining = False
        self._running = False
        self._run_task: asyncio.Task[None] | None = None
        self._last_refusal = ""
        self.error: BaseException | None = None
        """Why ``run()`` ended, if it ended with an error (``Unauthorized``, ``Replaced``)."""

    # --- configuration ----------------------------------------------------------------------

    def handler(self, service_id: str) -> Callable[[HandlerT], HandlerT]:
        """Decorator: ``@agent.handler("asr")`` registers the handler of a service."""

        def register(handler: HandlerT) -> HandlerT:
            self.add_handler(service_id, handler)
            return handler

        return register

    def add_handler(self, service_id: str, handler: Handler) -> None:
        self._jobs.handlers[service_id] = handler

    # --- life cycle -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Registered on a live connection."""
        return self._outbox.attached

    @property
    def held_job_ids(self) -> list[str]:
        """Jobs acked and not yet finished: queued or running (what heartbeats report)."""
        return self._jobs.ids

    async def run(self) -> None:
        """Stay connected until ``stop()``; raise ``Unauthorized`` (4401) or ``Replaced`` (4409)."""
        if self._running or self._stop.is_set():
            raise RuntimeError("an agent runs once; make a new one")
        missing = sorted({s.id for s in self.services} - set(self._jobs.handlers))
        if missing:
            raise ValueError(f"no handler for advertised services: {', '.join(missing)}")
        self._running = True
        try:
            await stay_connected(
                self._connection,
                peer="node",
                url=self.url,
                ident=lambda: self.node_id,
                stop=self._stop,
                backoff=self._backoff,
                rng=self._rng,
                on_delay=self.stats.backoff_delays.append,
            )
        except SdkError as exc:
            self.error = exc
            raise
        finally:
            self._running = False
            self._abandon_jobs()

    async def start(self, *, timeout_s: float | None = 30.0) -> str:
        """Run in the background and return the ``node_id`` once registered."""
        self._run_task = asyncio.create_task(self.run(), name=f"node-agent {self.url}")
        self._run_task.add_done_callback(_report_end)
        registered = asyncio.create_task(self._registered.wait())
        done, _ = await asyncio.wait(
            {self._run_task, registered}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if registered not in done:
            registered.cancel()
            if self._run_task in done:
                self._run_task.result()  # raises Unauthorized, Replaced, ...
                raise RuntimeError("the agent stopped before it registered")
            raise TimeoutError(f"not registered with {self.url} within {timeout_s} s")
        assert self.node_id is not None
        return self.node_id

    async def wait_registered(self, timeout_s: float | None = None) -> str:
        """The ``node_id`` once registered on the current (or next) connection."""
        await asyncio.wait_for(self._registered.wait(), timeout_s)
        assert self.node_id is not None
        return self.node_id

    async def wait_stopped(self) -> None:
        """Until the agent started by ``start()`` stops; raises what ``run()`` raised."""
        if self._run_task is None:
            raise RuntimeError("the agent was not started with start()")
        await asyncio.shield(self._run_task)

    async def drain(self) -> None:
        """Ask the scheduler to send no new jobs (also after reconnecting); running ones finish."""
        self._draining = True
        await self._outbox.send(p.NodeDrain(), reliable=False)

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop: drain, give held jobs ``grace_s`` to finish, cancel the rest, close.

        Jobs cancelled here get no result: the scheduler fails them over to another node.
        """
        tasks = self._jobs.tasks()
        if tasks and grace_s > 0:
            await self.drain()
            await asyncio.wait(tasks, timeout=grace_s)
        self._stop.set()
        self._abandon_jobs()
        ws = self._live_ws
        if ws is not None:
            await ws.close(1000, "node stopping")
        if self._run_task is not None:
            try:
                await self._run_task
            except Exception as exc:  # it already failed; stop() only reports it
                logger.info("node agent had stopped with %r", exc)

    async def drop_connection(self) -> None:
        """Drop the live connection with no closing handshake, as a network failure would; the
        agent reconnects as it does after any loss (the simulator flaps a node with it)."""
        ws = self._live_ws
        if ws is not None:
            ws.transport.abort()

    async def __aenter__(self) -> NodeAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def report_model_not_available(self, service: str | p.ServiceRef, reason: str) -> None:
        """Tell the scheduler this node cannot serve ``service`` now, outside of any job."""
        ref = service if isinstance(service, p.ServiceRef) else p.ServiceRef(id=service)
        await self._outbox.send(p.ModelNotAvailable(service=ref, reason=reason))

    def _abandon_jobs(self) -> None:
        """Cancel every held job and drop every unsent frame: the agent is done."""
        self._jobs.abandon()
        self._outbox.clear()

    # --- one connection ---------------------------------------------------------------------

    async def _connection(self) -> bool:
        """One connection's life; True if it got as far as registering."""
        registered: p.NodeRegistered | None = None
        async with connect(self.url, **self._connect_kwargs) as ws:
            self._live_ws = ws
            if self._stop.is_set():  # stop() ran while this connection was being opened
                self._live_ws = None
                await ws.close(1000, "node stopping")
                return False
            try:
                await ws.send(p.dump(self._register_frame()))
                registered = await self._await_registered(ws)
                if registered is not None:
                    await self._serve(ws, registered)
            except ConnectionClosed:
                pass
            finally:
                self._live_ws = None
        self._raise_if_fatal(ws)
        logger.info(
            "node %s disconnected (close %s %s)", self.node_id, ws.close_code, ws.close_reason
        )
        return registered is not None

    def _register_frame(self) -> p.NodeRegister:
        return p.NodeRegister(
            token=self._token,
            version=self.version,
            services=self.services,
            features=self.features,
            max_jobs=self.max_jobs,
            resources=self._load.read(),
            region=self.region,
        )

    async def _await_registered(self, ws: ClientConnection) -> p.NodeRegistered | None:
        """The ``node_registered`` reply; None if the scheduler closed instead."""
        async with asyncio.timeout(self._register_timeout_s):
            while True:
                frame = self._parse(await ws.recv())
                if isinstance(frame, p.NodeRegistered):
                    return frame
                if isinstance(frame, p.Error):
                    # UNAUTHORIZED comes with close 4401, which _raise_if_fatal reports.
                    logger.warning("node registration refused: %s %s", frame.code, frame.message)
                    self._last_refusal = frame.message
                elif frame is not None:
                    logger.warning("node ignored %r before node_registered", frame)

    async def _serve(self, ws: ClientConnection, registered: p.NodeRegistered) -> None:
        self.node_id = registered.node_id
        self.instance_id = registered.instance_id
        self.heartbeat_interval_ms = registered.heartbeat_interval_ms
        self.stats.registrations += 1
        logger.info(
            "node %s registered on instance %s (heartbeat %d ms)",
            registered.node_id,
            registered.instance_id,
            registered.heartbeat_interval_ms,
        )
        await self._outbox.open(ws)
        self._registered.set()
        heartbeats = asyncio.create_task(self._heartbeats.run(registered.heartbeat_interval_ms))
        try:
            if self._draining:
                await ws.send(p.dump(p.NodeDrain()))
            async for message in ws:
                await self._on_frame(message)
        finally:
            self._outbox.close()
            self._registered.clear()
            heartbeats.cancel()

    def _raise_if_fatal(self, ws: ClientConnection) -> None:
        code, reason = ws.close_code, ws.close_reason
        if code == p.CloseCode.UNAUTHORIZED:
            detail = reason or self._last_refusal or "bad or disabled node token"
            raise Unauthorized(f"the scheduler refused this node token (close 4401): {detail}")
        if code == p.CloseCode.REPLACED:
            raise Replaced(
                f"node {self.node_id} was replaced by a newer connection with its token "
                "(close 4409)"
            )

    def _parse(self, raw: str | bytes) -> p.Frame | None:
        try:
            return p.parse_outbound(raw, peer="node")
        except p.ProtocolError as exc:
            logger.warning("node ignored a bad frame from the scheduler: %s", exc.message)
            return None

    async def _on_frame(self, raw: str | bytes) -> None:
        frame = self._parse(raw)
        if isinstance(frame, p.JobAssign):
            await self._jobs.assign(frame)
        elif isinstance(frame, p.NodeJobCancel):
            self._jobs.cancel(frame)
        elif isinstance(frame, p.Error):
            self.stats.errors_received[frame.code] += 1
            ref = frame.ref.model_dump(exclude_none=True) if frame.ref else {}
            logger.warning(
                "node %s got error %s: %s %s", self.node_id, frame.code, frame.message, ref
            )


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("node agent stopped: %s", task.exception())
