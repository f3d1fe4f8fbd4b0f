"""A throwaway standalone redis-server on a free loopback port, for tests and the benchmark.

The conformance tests and the benchmark run channels_redis's RedisChannelLayer beside this
layer; it needs a standalone (non-cluster) Redis, and this starts one of its own rather than
borrowing whatever listens on 6379. Nothing is persisted, and ``stop`` ends only the server it
started (SHUTDOWN NOSAVE, then SIGTERM to its own pid if it does not go).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.ports import free_port


@dataclass
class StandaloneRedis:
    port: int
    directory: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @classmethod
    def start(cls, directory: Path, *, timeout: float = 10.0) -> StandaloneRedis:
        """Start a redis-server on a free port, using ``directory`` for its pid and log."""
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (see docs/development.md)")
        directory.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(3):  # another program may take the free port before we bind it
            instance = cls(port=free_port(), directory=directory)
            result = subprocess.run(
                [server, "--port", str(instance.port), "--bind", instance.host,
                 "--save", "", "--appendonly", "no", "--daemonize", "yes",
                 "--dir", str(directory), "--pidfile", str(instance.pidfile),
                 "--logfile", str(directory / f"redis-{instance.port}.log")],
                capture_output=True,
                text=True,
            )  # fmt: skip
            if result.returncode == 0 and instance._wait(answering=True, timeout=timeout):
                return instance
            last_error = result.stderr or result.stdout or instance.log()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    @property
    def pidfile(self) -> Path:
        return self.directory / f"redis-{self.port}.pid"

    def log(self) -> str:
        path = self.directory / f"redis-{self.port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, *, timeout: float = 10.0) -> None:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            self._client().shutdown(nosave=True)
        if self._wait(answering=False, timeout=timeout):
            return
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pidfile.read_text().strip()), signal.SIGTERM)
        self._wait(answering=False, timeout=timeout)

    def _client(self) -> redis.Redis:
        # Probes must fail fast once the server is gone, not be retried with backoff.
        return redis.Redis(
            host=self.host, port=self.port, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )

    def _wait(self, *, answering: bool, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                up = bool(self._client().ping())
            except (redis.exceptions.RedisError, OSError):
                up = False
            if up == answering:
                return True
            time.sleep(0.05)
        return False
