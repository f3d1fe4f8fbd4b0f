"""Real scheduler processes: daphne instances on loopback ports and ``manage.py`` commands.

Every process listens on and connects to 127.0.0.1 only. Waits poll a condition (the process
exited, an HTTP endpoint answered) within a bound, never a fixed sleep; whatever is started
here is stopped by its owner (``Instance.stop``, ``kill_tree``), even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.e2e.harness.http import http
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 45
STOP_TIMEOUT_S = 10
MANAGE_TIMEOUT_S = 60
# Variables that would send a process's or a client's traffic through a proxy: everything here
# is on loopback and nothing may leave it.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")


def loopback_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.lower() not in PROXY_VARIABLES}


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


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@dataclass
class Instance:
    """One daphne process serving the project on a port of its own."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    instance_id: str = ""  # as /readyz reports it, once the instance is ready

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        """``ws://127.0.0.1:<port>``; the endpoints are ``/ws/node/`` and ``/ws/session/``."""
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

    def wait_answering(self, path: str) -> dict[str, Any]:
        return wait_answering(f"{self.url}{path}", process=self.process, log=self.log_path)

    def stop(self) -> None:
        """SIGTERM (a drain), then SIGKILL if it is still there after ``STOP_TIMEOUT_S``."""
        if self.process.poll() is None:
            self.process.terminate()
        if self.wait_exit(STOP_TIMEOUT_S) is None:
            self.process.kill()
            self.process.wait()


def wait_answering(url: str, *, process: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """Wait until ``url`` answers 200; its body. Fails when ``process`` (the one that serves
    it) exits first, or after ``START_TIMEOUT_S``."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}:\n{tail(log)}")
        try:
            status, body = http("GET", url, timeout=2)
            if status == 200:
                return body
            last = body
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} not 200 within {START_TIMEOUT_S} s ({last!r}):\n{tail(log)}")


def start_instances(
    folder: Path, env: dict[str, str], *names: str, ready: bool = True
) -> list[Instance]:
    """One daphne per name, on free ports, all started at once; returned once each is ready.

    Ready means ``/readyz`` answers 200 (the instance reaches the cluster and has registered;
    its id is recorded). With ``ready=False`` the instance only has to answer ``/healthz``,
    for a test of an instance that cannot become ready. If one fails to come up, every
    instance of the call is stopped.
    """
    started = [_spawn(folder, env, name) for name in names]
    try:
        for instance in started:
            if ready:
                body = instance.wait_answering("/readyz")
                instance.instance_id = str(body["checks"]["instance"]["instance_id"])
            else:
                instance.wait_answering("/healthz")
    except BaseException:
        for instance in started:
            instance.stop()
        raise
    return started


def _spawn(folder: Path, env: dict[str, str], name: str) -> Instance:
    port = free_port()
    log_path = folder / f"{name}.log"
    with log_path.open("wb") as log:
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
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Instance(name=name, port=port, process=process, log_path=log_path)


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
