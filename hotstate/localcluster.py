"""A local Redis Cluster for development, tests and the demo: 3 primaries + 3 replicas on loopback.

Usable without Django (``python -m hotstate.localcluster start|stop|status``) so that the run and
test scripts and the pytest fixture can bring it up before any settings are loaded; the
``redis_cluster`` management command wraps the same functions.

Starting is idempotent: a healthy cluster of ours is left alone, missing members are restarted,
and a cluster none of whose members runs is created afresh (it keeps nothing on disk).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DEFAULT_BASE_PORT = 7100
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "var" / "redis-cluster"
MIN_REDIS_MAJOR = 7
SLOT_COUNT = 16384
BUS_PORT_OFFSET = 10000


def _cluster_info(conn: redis.Redis) -> dict[str, Any]:
    return dict(conn.execute_command("CLUSTER INFO"))  # type: ignore[no-untyped-call]


class LocalClusterError(Exception):
    """Something stops the local cluster from running; the message says what to do."""


@dataclass(frozen=True)
class MemberStatus:
    port: int
    running: bool
    role: str = "-"
    cluster_state: str = "-"
    slots_ok: int = 0
    known_nodes: int = 0


@dataclass
class LocalCluster:
    base_port: int = DEFAULT_BASE_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    primaries: int = 3
    replicas_per_primary: int = 1
    host: str = "127.0.0.1"
    node_timeout_ms: int = 3000
    _server: str | None = field(default=None, repr=False)

    @property
    def ports(self) -> list[int]:
        count = self.primaries * (1 + self.replicas_per_primary)
        return list(range(self.base_port, self.base_port + count))

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.base_port}"

    # --- public operations --------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> str:
        """Bring the cluster up and wait until every slot is served; return what was done."""
        running = [port for port in self.ports if self._is_ours(port)]
        if len(running) == len(self.ports) and self._healthy():
            return f"Redis Cluster already running on {self._port_range()}"
        self._check_ports_free([port for port in self.ports if port not in running])
        server = self._redis_server()
        if not running:
            # Nothing of ours runs: whatever is on disk describes a dead cluster; start afresh.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            for port in self.ports:
                self._spawn(server, port)
            self._wait_until(lambda: all(self._answers(p) for p in self.ports), timeout, "start")
            self._create()
            action = "created"
        else:
            for port in self.ports:
                if port not in running:
                    self._spawn(server, port)
            action = "restarted missing members of"
        self._wait_until(self._healthy, timeout, "reach cluster_state:ok with all slots served")
        return f"Redis Cluster {action} on {self._port_range()} ({self.url})"

    def stop(self, *, purge: bool = False, timeout: float = 20.0) -> str:
        stopped = 0
        for port in self.ports:
            if self._is_ours(port):
                # The server closes the connection as it exits.
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    self._conn(port).shutdown(nosave=True)
                stopped += 1
        self._wait_until(
            lambda: not any(self._answers(p) for p in self.ports), timeout, "stop its members"
        )
        if purge:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return f"Stopped {stopped} Redis Cluster member(s) on {self._port_range()}"

    def status(self) -> list[MemberStatus]:
        members = []
        for port in self.ports:
            if not self._is_ours(port):
                members.append(MemberStatus(port=port, running=False))
                continue
            conn = self._conn(port)
            info = _cluster_info(conn)
            role = conn.info("replication").get("role", "?")
            members.append(
                MemberStatus(
                    port=port,
                    running=True,
                    role="primary" if role == "master" else "replica",
                    cluster_state=str(info.get("cluster_state")),
                    slots_ok=int(info.get("cluster_slots_ok", 0)),
                    known_nodes=int(info.get("cluster_known_nodes", 0)),
                )
            )
        return members

    def is_healthy(self) -> bool:
        return all(self._is_ours(p) for p in self.ports) and self._healthy()

    def member_pid(self, port: int) -> int:
        """The process id of our member on ``port`` (it reports its own, so no pidfile race)."""
        return int(self._conn(port).info("server")["process_id"])

    def start_member(self, port: int) -> None:
        """Start the member of ``port`` again, as ``start`` would: with its ``nodes.conf`` it
        rejoins the cluster it left (a primary that was failed over comes back as a replica)."""
        self._spawn(self._redis_server(), port)

    # --- internals ----------------------------------------------------------------------------

    def _port_range(self) -> str:
        return f"{self.host}:{self.ports[0]}-{self.ports[-1]}"

    def _conn(self, port: int) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=port,
            decode_responses=True,
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
            # A probe of a port held by something else must fail fast, not be retried.
            retry=Retry(NoBackoff(), 0),
        )

    def _answers(self, port: int) -> bool:
        try:
            return bool(self._conn(port).ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    def _is_ours(self, port: int) -> bool:
        """A cluster-enabled Redis whose data directory is ours answers on ``port``."""
        try:
            conn = self._conn(port)
            if conn.info("cluster").get("cluster_enabled") != 1:
                return False
            directory = str(conn.config_get("dir").get("dir", ""))
        except (redis.exceptions.RedisError, OSError):
            return False
        return Path(directory).resolve() == (self.data_dir / str(port)).resolve()

    def _check_ports_free(self, ports: list[int]) -> None:
        for port in ports:
            for candidate in (port, port + BUS_PORT_OFFSET):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        sock.bind((self.host, candidate))
                    except OSError:
                        raise LocalClusterError(
                            f"port {self.host}:{candidate} is taken by {self._holder(port)}; "
                            f"stop it or choose another base port (REDIS_CLUSTER_PORT, now "
                            f"{self.base_port})"
                        ) from None

    def _holder(self, port: int) -> str:
        """Who holds ``port``, as far as a Redis probe can tell."""
        try:
            directory = self._conn(port).config_get("dir").get("dir", "")
        except (redis.exceptions.RedisError, OSError):
            return "another program"
        return (
            f"a Redis server of another checkout or data folder ({directory}; this one uses "
            f"{self.data_dir / str(port)})"
        )

    def _redis_server(self) -> str:
        if self._server:
            return self._server
        server = shutil.which("redis-server")
        if server is None:
            server = self._install_redis_server()
        output = subprocess.run(
            [server, "--version"], capture_output=True, text=True, check=True
        ).stdout
        match = re.search(r"v=(\d+)\.", output)
        if not match or int(match.group(1)) < MIN_REDIS_MAJOR:
            raise LocalClusterError(
                f"{server} is too old ({output.strip()}); Redis >= {MIN_REDIS_MAJOR} is required"
            )
        if shutil.which("redis-cli") is None:
            raise LocalClusterError("redis-cli is missing; install the redis-tools package")
        self._server = server
        return server

    def _install_redis_server(self) -> str:
        command = "apt-get update && apt-get install -y redis-server"
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise LocalClusterError(
                f"redis-server (>= {MIN_REDIS_MAJOR}) is not installed. Install it, for example "
                f"with: sudo sh -c '{command}'  (or: brew install redis)"
            )
        print(f"redis-server not found; installing it: {command}", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        result = subprocess.run(["sh", "-c", command], env=env)
        server = shutil.which("redis-server")
        if result.returncode != 0 or server is None:
            raise LocalClusterError(f"could not install redis-server; run: {command}")
        return server

    def _spawn(self, server: str, port: int) -> None:
        directory = self.data_dir / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        args = [
            server,
            "--port", str(port),
            "--bind", self.host,
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--dir", str(directory),
            "--daemonize", "yes",
            "--pidfile", str(directory / "redis.pid"),
            "--logfile", str(directory / "redis.log"),
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalClusterError(
                f"redis-server on port {port} failed to start: {result.stderr or result.stdout}"
                f" (log: {directory / 'redis.log'})"
            )

    def _create(self) -> None:
        addresses = [f"{self.host}:{port}" for port in self.ports]
        result = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas",
             str(self.replicas_per_primary), "--cluster-yes"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise LocalClusterError(f"redis-cli --cluster create failed:\n{result.stdout}")

    def _healthy(self) -> bool:
        """Every member sees state ok, all slots ok, every member known, all replicas attached."""
        primaries = 0
        for port in self.ports:
            try:
                conn = self._conn(port)
                info = _cluster_info(conn)
                replication = conn.info("replication")
            except (redis.exceptions.RedisError, OSError):
                return False
            if (
                info.get("cluster_state") != "ok"
                or int(info.get("cluster_slots_ok", 0)) != SLOT_COUNT
                or int(info.get("cluster_known_nodes", 0)) != len(self.ports)
            ):
                return False
            if replication.get("role") == "master":
                primaries += 1
            elif replication.get("master_link_status") != "up":
                return False
        return primaries == self.primaries

    def _wait_until(self, predicate: object, timeout: float, what: str) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        logs = ", ".join(str(self.data_dir / str(p) / "redis.log") for p in self.ports[:1])
        raise LocalClusterError(
            f"Redis Cluster on {self._port_range()} did not {what} within {timeout:g} s; "
            f"see the logs ({logs} and its siblings), or reset it with: "
            f"python -m hotstate.localcluster stop --purge"
        )


def from_environment() -> LocalCluster:
    """The cluster that settings would point at, configured by the same variables."""
    base_port = int(os.environ.get("REDIS_CLUSTER_PORT", DEFAULT_BASE_PORT))
    var_dir = os.environ.get("SCHEDULER_VAR_DIR")
    data_dir = Path(var_dir) / "redis-cluster" if var_dir else DEFAULT_DATA_DIR
    return LocalCluster(base_port=base_port, data_dir=data_dir)


def run_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hotstate.localcluster",
        description="Start, stop or inspect the local Redis Cluster (3 primaries + 3 replicas).",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, help="base port (default: REDIS_CLUSTER_PORT or 7100)")
    parser.add_argument("--purge", action="store_true", help="with stop: delete the data folder")
    args = parser.parse_args(argv)
    cluster = from_environment()
    if args.port:
        cluster.base_port = args.port
    try:
        if args.action == "start":
            print(cluster.start())
        elif args.action == "stop":
            print(cluster.stop(purge=args.purge))
        else:
            for member in cluster.status():
                state = (
                    f"{member.role:8} cluster_state={member.cluster_state} "
                    f"slots_ok={member.slots_ok} known_nodes={member.known_nodes}"
                    if member.running
                    else "not running"
                )
                print(f"{cluster.host}:{member.port}  {state}")
            return 0 if cluster.is_healthy() else 1
    except LocalClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_cli())
