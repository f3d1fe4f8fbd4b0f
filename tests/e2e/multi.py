"""Several real scheduler processes sharing one database and one Redis Cluster namespace.

The multi-instance tests (``test_multi_instance.py``, ``test_serve.py``) run what DESIGN.md
"Processes" describes: separate daphne processes (or ``manage.py serve`` with its children) that
only meet in Redis Cluster (hot state and the ``cluster`` channel layer) and in the SQL database.

What every process of one deployment shares, through its environment:

- ``DATABASE_URL``: one SQLite file in the test's temporary folder, migrated and given
  credentials by ``manage.py`` subprocesses with the same environment. It is SQLite even when CI
  points the outer suite's ``DATABASE_URL`` at PostgreSQL: pytest-django's test database is
  invisible to subprocesses, and these processes' durable records are their own.
- ``HOTSTATE_PREFIX`` and ``CHANNEL_LAYER_PREFIX``: random per deployment, so no other test or
  running server sees its nodes or its inboxes; every key under both is deleted afterwards.
- ``CHANNEL_LAYER=cluster``, ``REDIS_CLUSTER_URL`` from the ``redis_cluster_url`` fixture (the
  cluster is already up; ``SCHEDULER_VAR_DIR`` also moves the local cluster's data folder, but
  only ``python -m hotstate.localcluster`` reads that, and these tests never run it).

Everything listens on and connects to 127.0.0.1 only, every wait is bounded, and whatever a test
starts is stopped by ``close()`` even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from redis.cluster import RedisCluster
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conftest import ROOT, free_port
from protocol import Resources
from scheduler_sdk import Job, NodeAgent, SessionClient
from scheduler_sdk.backoff import Backoff
from tests.support.keys import delete_keys_sync

Frame = dict[str, Any]

MANAGE_TIMEOUT_S = 60
START_TIMEOUT_S = 45
STOP_TIMEOUT_S = 10
WAIT_S = 10.0
# Credentials subprocesses at once: each is a Django start-up, and the machine has 2 cores.
PARALLEL_COMMANDS = 5
# Variables that would route a client's traffic through a proxy; nothing may leave loopback.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")
# Rejections a submit meets legitimately while slots are taken or a snapshot is still catching
# up (a node registered elsewhere is schedulable everywhere within about a second); the
# request id is not bound after a rejection, so it is simply tried again.
RETRYABLE = frozenset({"NO_AVAILABLE_NODE", "UNKNOWN_SERVICE", "RATE_LIMITED"})
TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELLED", "TIMED_OUT"})


def loopback_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.lower() not in PROXY_VARIABLES}


def unique_prefix(kind: str) -> str:
    # Letters, digits and '-' only: valid for both the hot state and the channel layer.
    return f"e2e-{kind}-{secrets.token_hex(5)}"


# --- database and credentials -------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    node_tokens: tuple[str, ...]
    api_keys: dict[str, str]  # tenant -> key


def manage(env: dict[str, str], *args: str, timeout: float = MANAGE_TIMEOUT_S) -> str:
    """``manage.py <args>`` with ``env``; its stdout (the command must succeed)."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _secrets(env: dict[str, str], commands: list[list[str]]) -> list[str]:
    """Run credential commands a few at a time; the secret is the last line each prints."""
    found: list[str] = []
    for start in range(0, len(commands), PARALLEL_COMMANDS):
        chunk = commands[start : start + PARALLEL_COMMANDS]
        batch = [
            subprocess.Popen(
                [sys.executable, "manage.py", *command],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for command in chunk
        ]
        try:
            for command, process in zip(chunk, batch, strict=True):
                out, err = process.communicate(timeout=MANAGE_TIMEOUT_S)
                assert process.returncode == 0, f"manage.py {command}: {out}{err}"
                found.append(out.strip().splitlines()[-1])
        finally:
            for process in batch:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return found


def database_env(folder: Path, db: Path) -> dict[str, str]:
    return loopback_env(
        {
            **os.environ,
            # Never the outer suite's DATABASE_URL (PostgreSQL in CI): see the module docstring.
            "DATABASE_URL": f"sqlite:///{db}",
            "SCHEDULER_VAR_DIR": str(folder),
        }
    )


def prepare_database(
    folder: Path, *, nodes: int = 0, tenants: Iterable[str] = ()
) -> tuple[Path, Credentials]:
    """A migrated SQLite file in ``folder`` holding ``nodes`` node records and one API key per
    tenant. Deployments copy it (``Deployment(template=...)``), so the credentials work in each."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "template.sqlite3"
    env = database_env(folder, db)
    manage(env, "migrate", "--noinput", "-v0")
    tenants = list(tenants)
    commands = [["create_node_token", f"e2e-multi-{secrets.token_hex(4)}"] for _ in range(nodes)]
    commands += [["create_api_key", tenant] for tenant in tenants]
    found = _secrets(env, commands)
    return db, Credentials(
        node_tokens=tuple(found[:nodes]), api_keys=dict(zip(tenants, found[nodes:], strict=True))
    )


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy even while other processes use ``source`` (SQLite's backup API)."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


# --- processes ----------------------------------------------------------------------------------


def http_get(url: str, *, timeout: float = 2.0) -> tuple[int, Frame]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def http_json(
    method: str, url: str, *, api_key: str, body: Frame | None = None, timeout: float = 5.0
) -> tuple[int, Frame]:
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_ready(url: str, *, process: subprocess.Popen[bytes] | None, log: Path) -> str:
    """Wait for ``/readyz`` 200 and return the instance id it reports."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{tail(log)}")
        try:
            status, body = http_get(f"{url}/readyz", timeout=2)
            if status == 200:
                return str(body["checks"]["instance"]["instance_id"])
            last = body
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url}/readyz not 200 within {START_TIMEOUT_S} s ({last!r}):\n{tail(log)}")


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def kill_tree(pid: int, *, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM ``pid`` and every descendant (``serve`` starts its children in sessions of their
    own, so they would outlive it), then SIGKILL whatever is still there after ``timeout``."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)


@dataclass
class Instance:
    """One daphne process of a deployment, on a port of its own."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    instance_id: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


@dataclass
class Deployment:
    """Processes sharing one database file, one hot-state prefix and one channel-layer prefix."""

    folder: Path
    redis_url: str
    template: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    hot_prefix: str = field(default_factory=lambda: unique_prefix("hot"))
    layer_prefix: str = field(default_factory=lambda: unique_prefix("layer"))
    instances: list[Instance] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        db = self.folder / "db.sqlite3"
        copy_database(self.template, db)
        self.env = {
            **database_env(self.folder, db),
            "REDIS_CLUSTER_URL": self.redis_url,
            "HOTSTATE_PREFIX": self.hot_prefix,
            "CHANNEL_LAYER": "cluster",
            "CHANNEL_LAYER_PREFIX": self.layer_prefix,
            "LOG_LEVEL": "INFO",
            **self.extra_env,
        }

    def start_instances(self, *names: str, role: str = "all") -> list[Instance]:
        """Start one daphne per name (on free ports, all at once) and wait until each is ready."""
        started = []
        for name in names:
            port = free_port()
            log_path = self.folder / f"{name}.log"
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "--access-log",
                    os.devnull,
                    "scheduler_project.asgi:application",
                ],
                cwd=ROOT,
                env={**self.env, "SCHEDULER_ROLE": role},
                stdout=log_path.open("wb"),
                stderr=subprocess.STDOUT,
            )
            instance = Instance(name=name, port=port, process=process, log_path=log_path)
            self.instances.append(instance)
            started.append(instance)
        for instance in started:
            instance.instance_id = wait_ready(
                instance.url, process=instance.process, log=instance.log_path
            )
        return started

    def popen(
        self, *args: str, log_name: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """A ``manage.py`` subprocess of this deployment, stopped by ``close()``."""
        log_path = self.folder / f"{log_name}.log"
        process = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.others.append(process)
        return process, log_path

    def logs(self) -> str:
        return "\n".join(
            f"--- {instance.name} (pid {instance.pid}, {instance.instance_id}) ---\n"
            + tail(instance.log_path, 40)
            for instance in self.instances
        )

    def close(self) -> int:
        """Stop every process (SIGTERM, then SIGKILL) and delete the deployment's keys."""
        for instance in self.instances:
            if instance.process.poll() is None:
                instance.process.terminate()
        for process in self.others:
            kill_tree(process.pid)
        for instance in self.instances:
            if instance.wait_exit(STOP_TIMEOUT_S) is None:
                instance.process.kill()
                instance.process.wait()
        return delete_keys_sync(self.redis_url, self.hot_prefix, self.layer_prefix)


def inbox_entries_added(redis_url: str, layer_prefix: str) -> dict[str, int]:
    """``entries-added`` of every process inbox of the channel layer: how many messages ever
    crossed the layer to each process (a message to a socket of the same process never does)."""
    client = RedisCluster.from_url(
        redis_url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
    )
    try:
        added = {}
        for key in client.scan_iter(match=f"{layer_prefix}:*:inbox", count=1000):
            info = client.xinfo_stream(key)
            added[key] = int(info["entries-added"])
        return added
    finally:
        client.close()


def node_reservations(redis_url: str, hot_prefix: str, node_ids: Iterable[str]) -> dict[str, int]:
    """How many slots each node holds in the deployment's hot state (keys from hotstate.keys)."""
    from django.test import override_settings

    from hotstate import keys

    client = RedisCluster.from_url(
        redis_url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
    )
    try:
        with override_settings(HOTSTATE_PREFIX=hot_prefix):
            return {node_id: client.zcard(keys.node_reservations(node_id)) for node_id in node_ids}
    finally:
        client.close()


# --- a load balancer ------------------------------------------------------------------------------


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


# --- peers --------------------------------------------------------------------------------------


class RawSession:
    """A session speaking PROTOCOL.md frame by frame over ``websockets``; a reader task keeps
    every frame received, in order."""

    def __init__(self, ws: ClientConnection, ready: Frame) -> None:
        self.ws = ws
        self.ready = ready
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @property
    def session_id(self) -> str:
        return str(self.ready["session_id"])

    @property
    def instance_id(self) -> str:
        return str(self.ready["instance_id"])

    @classmethod
    async def open(cls, ws_base: str, api_key: str, session_id: str | None = None) -> RawSession:
        ws = await connect(
            f"{ws_base}/ws/session/", compression=None, proxy=None, open_timeout=WAIT_S
        )
        init: Frame = {"type": "session_init", "api_key": api_key}
        if session_id is not None:
            init["session_id"] = session_id
        await ws.send(json.dumps(init))
        async with asyncio.timeout(WAIT_S):
            ready = json.loads(await ws.recv())
        assert ready.get("type") == "session_ready", ready
        return cls(ws, ready)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                frame = json.loads(message)
                async with self._changed:
                    self.frames.append(frame)
                    self._changed.notify_all()
        except (ConnectionClosed, ValueError):
            pass
        finally:
            self.close_code = self.ws.close_code
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(
        self, match: Callable[[Frame], bool], *, start: int = 0, timeout: float = WAIT_S
    ) -> Frame:
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    for frame in self.frames[start:]:
                        if match(frame):
                            return frame
                    if self._reader.done():
                        raise AssertionError(f"socket closed ({self.close_code}) while waiting")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no matching frame within {timeout} s; last frames: {self.frames[-5:]}"
            ) from None

    def of_type(self, type_: str, **fields: Any) -> list[Frame]:
        return [
            f
            for f in self.frames
            if f.get("type") == type_ and all(f.get(k) == v for k, v in fields.items())
        ]

    async def submit(
        self,
        request_id: str,
        service: str,
        payload: Frame,
        *,
        retry: frozenset[str] = RETRYABLE,
        timeout: float = 20.0,
        retry_delay_s: float = 0.1,
    ) -> Frame:
        """Submit until ``job_accepted``; a rejection in ``retry`` is tried again (same id)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            mark = len(self.frames)
            await self.ws.send(
                json.dumps(
                    {
                        "type": "job_submit",
                        "request_id": request_id,
                        "service": {"id": service},
                        "payload": payload,
                    }
                )
            )
            reply = await self.wait_for(
                lambda f: (
                    f.get("type") in ("job_accepted", "job_rejected", "error")
                    and request_id in (f.get("request_id"), (f.get("ref") or {}).get("request_id"))
                ),
                start=mark,
            )
            if reply["type"] == "job_accepted":
                return reply
            if reply.get("code") not in retry or loop.time() >= deadline:
                raise AssertionError(f"submit {request_id} refused: {reply}")
            await asyncio.sleep(retry_delay_s)

    async def result(self, job_id: str, *, timeout: float = WAIT_S) -> Frame:
        return await self.wait_for(
            lambda f: f.get("type") == "job_result" and f.get("job_id") == job_id, timeout=timeout
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self._reader


@dataclass
class Recorder:
    """A node's handler that records what it ran: how many at once, and how often each job."""

    delay_s: float = 0.2
    progress: bool = True
    gate: asyncio.Event | None = None
    running: int = 0
    max_running: int = 0
    runs: Counter[str] = field(default_factory=Counter)
    done: Counter[str] = field(default_factory=Counter)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set by the first run

    async def __call__(self, job: Job) -> dict[str, Any]:
        self.runs[job.job_id] += 1
        self.started.set()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.progress:
                await job.progress(0.5, {"halfway": job.job_id})
            if self.gate is not None:
                await asyncio.wait_for(self.gate.wait(), 30)
            await asyncio.sleep(self.delay_s)
            self.done[job.job_id] += 1
            return {"echo": job.payload, "job_id": job.job_id}
        finally:
            self.running -= 1


def node_agent(
    ws_base: str,
    token: str,
    service: str,
    handler: Callable[[Job], Any],
    *,
    max_jobs: int,
    **options: Any,
) -> NodeAgent:
    """An SDK node offering ``service``; it reports a light, fixed load so that selection never
    skips it for this machine's real CPU or memory figures, and reconnects quickly."""
    return NodeAgent(
        f"{ws_base}/ws/node/",
        token,
        services=[service],
        max_jobs=max_jobs,
        handlers={service: handler},
        resources=lambda: Resources(cpu_pct=5.0, mem_pct=10.0),
        backoff=options.pop("backoff", Backoff(initial_s=0.05, max_s=0.5)),
        register_timeout_s=5.0,
        connect_kwargs={"proxy": None},
        **options,
    )


def session_client(ws_base: str, api_key: str, **options: Any) -> SessionClient:
    return SessionClient(
        f"{ws_base}/ws/session/",
        api_key,
        backoff=options.pop("backoff", Backoff(initial_s=0.05, max_s=0.5)),
        ready_timeout_s=5.0,
        connect_kwargs={"proxy": None},
        **options,
    )
