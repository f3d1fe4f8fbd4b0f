"""``manage.py serve``: the one-machine deployment (DESIGN.md, Processes).

One listening socket, opened here and inherited by N daphne instances (``--fd``), so the kernel
spreads connections across them; W worker processes for the shared duties; optionally the demo
simulator. Whatever dies is restarted, with a backoff while it keeps dying young. SIGTERM or
SIGINT drains: every instance gets SIGUSR1 (see ``core.drain``), and only what has
not left by the deadline is terminated; workers stop after the instances.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
YOUNG_S = 10.0
MAX_BACKOFF_S = 30.0
POLL_S = 0.2


@dataclass
class Child:
    """One supervised process: how to start it and how to stop it gracefully."""

    name: str
    argv: list[str]
    env: dict[str, str]
    stop_signal: int = signal.SIGTERM
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    restarts: int = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env=self.env, pass_fds=self.pass_fds, cwd=ROOT, start_new_session=True
        )
        self.started_at = time.monotonic()
        logger.info("started %s (pid %s)", self.name, self.process.pid)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signum)


@dataclass
class Supervisor:
    host: str
    port: int
    instances: int
    workers: int
    drain_timeout: float
    demo_argv: Sequence[str] | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    on_ready: Callable[[str], None] | None = None
    children: list[Child] = field(default_factory=list)
    _stopping: bool = False
    _sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def open_socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise SystemExit(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        sock.listen(1024)
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        return sock

    def plan(self, fd: int) -> list[Child]:
        python = sys.executable
        max_frame = self.env.get("MAX_FRAME_BYTES", str(1024 * 1024))
        children = [
            Child(
                name=f"instance-{n}",
                argv=[
                    python,
                    "-m",
                    "daphne",
                    "--fd",
                    str(fd),
                    "--websocket-max-message-size",
                    max_frame,
                    "--websocket-max-frame-size",
                    max_frame,
                    "--access-log",
                    os.devnull,
                    "scheduler_project.asgi:application",
                ],
                env={**self.env, "SCHEDULER_ROLE": "instance"},
                stop_signal=signal.SIGUSR1,
                pass_fds=(fd,),
            )
            for n in range(1, self.instances + 1)
        ]
        children += [
            Child(
                name=f"worker-{n}",
                argv=[python, str(ROOT / "manage.py"), "worker"],
                env={**self.env, "SCHEDULER_ROLE": "worker"},
            )
            for n in range(1, self.workers + 1)
        ]
        return children

    def run(self) -> int:
        self._sock = self.open_socket()
        self.children = self.plan(self._sock.fileno())
        previous = {
            signum: signal.signal(signum, self._on_stop)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for child in self.children:
                child.start()
            self._wait_ready()
            if self.demo_argv and not self._stopping:
                demo = Child(name="demo", argv=list(self.demo_argv), env=self.env)
                demo.start()
                self.children.append(demo)
            while not self._stopping:
                self._restart_dead()
                time.sleep(POLL_S)
            self._drain()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._sock.close()
        return 0

    def _on_stop(self, signum: int, frame: object) -> None:
        if self._stopping:
            logger.warning("second %s: stopping at once", signal.Signals(signum).name)
            for child in self.children:
                child.signal(signal.SIGKILL)
            raise SystemExit(1)
        logger.warning("%s: draining", signal.Signals(signum).name)
        self._stopping = True

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        if self.on_ready:
                            self.on_ready(self.url)
                        return
            except OSError:
                pass
            self._restart_dead()
            time.sleep(0.2)
        if not self._stopping:
            logger.warning(
                "no instance reported ready within %ss; see %s/readyz", timeout, self.url
            )

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.running or child.process is None or self._stopping:
                continue
            if child.next_start == 0.0:
                code = child.process.returncode
                young = now - child.started_at < YOUNG_S
                child.failures = child.failures + 1 if young else 0
                delay = min(MAX_BACKOFF_S, 0.5 * 2**child.failures) if child.failures else 0.0
                child.next_start = now + delay
                logger.warning("%s exited with %s; restarting in %.1fs", child.name, code, delay)
            if now >= child.next_start:
                child.next_start = 0.0
                child.restarts += 1
                child.start()

    def _drain(self) -> None:
        """Instances first (they hand their peers to each other and to restarts elsewhere),
        then the demo and the workers, which finish what the instances left in Redis."""
        instances = [c for c in self.children if c.name.startswith("instance-")]
        others = [c for c in self.children if not c.name.startswith("instance-")]
        # Drain one instance at a time while others still serve, so its peers reconnect to a
        # running instance; the last one's peers wait for whatever replaces this machine.
        for child in instances:
            child.signal(child.stop_signal)
            self._wait_exit([child], self.drain_timeout)
        for child in others:
            child.signal(child.stop_signal)
        self._wait_exit(others, 10.0)

    def _wait_exit(self, children: list[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(c.running for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in children:
            if child.running:
                logger.warning("%s did not stop within %ss; terminating", child.name, timeout)
                child.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while any(c.running for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in children:
            if child.running:
                child.signal(signal.SIGKILL)
            if child.process is not None:
                child.process.wait()
