"""A load balancer for the tests in which peers must find another instance on their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from tests.e2e.harness.processes import Instance


class Balancer:
    """A TCP load balancer on 127.0.0.1 in front of several instances, as nginx or HAProxy
    would be (docs/deployment.md): round robin over the backends whose ``/readyz`` answered 200
    at the last health check (every ``interval_s``), falling back to the next backend when a
    connection is refused. Bytes pass through untouched, so close codes reach the peers as sent.
    """

    def __init__(self, backends: list[Instance], *, interval_s: float = 0.25) -> None:
        self.backends = list(backends)
        self.interval_s = interval_s
        self.ready = {b.port: True for b in self.backends}
        self.routed: Counter[int] = Counter()  # port -> connections handed to it
        self._next = 0
        self._server: asyncio.Server | None = None
        self._health: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._health = asyncio.create_task(self._check_health())

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        if self._pipes:
            await asyncio.wait(self._pipes, timeout=2)

    def _order(self) -> list[Instance]:
        self._next += 1
        rotated = [
            self.backends[(self._next + i) % len(self.backends)] for i in range(len(self.backends))
        ]
        ready = [b for b in rotated if self.ready.get(b.port)]
        return ready + [b for b in rotated if b not in ready]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            for backend in self._order():
                try:
                    upstream = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", backend.port), 2
                    )
                except (OSError, TimeoutError):
                    continue
                self.routed[backend.port] += 1
                break
            if upstream is None:
                return
            up_reader, up_writer = upstream
            pipes = [
                asyncio.create_task(_pipe(reader, up_writer)),
                asyncio.create_task(_pipe(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                up_writer.close()
        finally:
            writer.close()
            self._pipes.discard(task)

    async def _check_health(self) -> None:
        while True:
            for backend in self.backends:
                self.ready[backend.port] = await _ready(backend.port)
            await asyncio.sleep(self.interval_s)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()


async def _ready(port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(
                    b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                status = await reader.readline()
            finally:
                writer.close()
        return b" 200 " in status
    except (OSError, TimeoutError):
        return False
