"""``manage.py serve`` as an operator runs it (README "Processes", docs/deployment.md).

One listening socket shared by two daphne instances (``--fd``) and one worker, all supervised by
``serve``; ``manage.py simulate`` drives simulated nodes and sessions through that socket and
checks the scheduler's promises itself (max_jobs, one dispatch per attempt, every result exactly
once). The test holds it to zero violations on a quiet run and on a run during which one
instance is drained with SIGUSR1 (serve must start a new one), then stops serve with SIGTERM:
it must drain, exit 0 and leave no child behind.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.harness.deployment import Deployment
from tests.e2e.harness.processes import ROOT, kill_tree, tail, wait_answering
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

DRAIN_GRACE_S = 3.0
SERVE_ENV = {"DRAIN_GRACE": str(DRAIN_GRACE_S), "HEARTBEAT_INTERVAL_MS": "1000", "ACK_TIMEOUT": "2"}
SIMULATE_TIMEOUT_S = 120
# serve drains its instances one at a time (each within DRAIN_GRACE + 5 s), then its workers.
SERVE_STOP_S = 2 * (DRAIN_GRACE_S + 5) + 10


def is_daphne(proc: psutil.Process) -> bool:
    cmdline = proc.cmdline()
    return "daphne" in cmdline and "--fd" in cmdline


def is_worker(proc: psutil.Process) -> bool:
    cmdline = proc.cmdline()
    return "manage.py" in " ".join(cmdline) and "worker" in cmdline


SEEN: dict[int, psutil.Process] = {}


def children(serve: subprocess.Popen[bytes], kind) -> list[psutil.Process]:
    """serve's live children of one kind (remembered, so that a failing test can stop them
    even after serve itself is gone: they run in sessions of their own)."""
    found = []
    for proc in psutil.Process(serve.pid).children(recursive=True):
        SEEN.setdefault(proc.pid, proc)
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and kind(proc):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_for(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n{tail(log)}"
        time.sleep(0.1)


def peer_sockets(proc: psutil.Process, port: int) -> int:
    """WebSocket or HTTP peers this daphne holds on the shared listening port."""
    try:
        return sum(
            1
            for conn in proc.net_connections(kind="tcp")
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port
        )
    except psutil.Error:
        return 0


def simulate(deployment: Deployment, url: str, prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "simulate",
            "--url",
            url,
            "--jobs",
            "200",
            "--nodes",
            "3",
            "--sessions",
            "2",
            "--job-ms",
            "100",
            "--prefix",
            prefix,
            "--job-timeout-ms",
            "20000",
            "--grace",
            "5",
            "--quiet",
        ],
        cwd=ROOT,
        env=deployment.env,  # serve's own database: the simulator makes its credentials there
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    try:
        out, err = process.communicate(timeout=SIMULATE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(
            f"simulate did not finish within {SIMULATE_TIMEOUT_S} s:\n{out}{err}"
        ) from None
    assert process.returncode == 0, f"simulate exited with {process.returncode}:\n{out}\n{err}"
    assert "No invariant violations seen." in out, out
    assert "VIOLATIONS" not in out and "PROBLEM" not in out, out
    assert re.search(r"^\s+missing\s+0$", out, re.MULTILINE), out
    return out


def test_serve_survives_simulate_and_a_rolling_drain_then_stops_cleanly(
    tmp_path: Path, redis_cluster_url: str, e2e_template_db: Path
) -> None:
    deployment = Deployment(tmp_path / "serve", redis_cluster_url, e2e_template_db, SERVE_ENV)
    api_key = deployment.api_key("acme")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve, log = deployment.popen(
        "serve",
        "--instances",
        "2",
        "--workers",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        log_name="serve",
    )
    sims: list[subprocess.Popen[str]] = []
    try:
        wait_answering(f"{url}/readyz", process=serve, log=log)
        wait_for(lambda: len(children(serve, is_daphne)) == 2, 20, "two instances", log)
        assert len(children(serve, is_worker)) == 1

        # 1. A quiet run through the shared socket.
        sims.append(simulate(deployment, url, "sim-quiet"))
        finish(sims[-1])

        # 2. A run during which the instance holding the most peers is drained.
        sims.append(simulate(deployment, url, "sim-drain"))
        before = {proc.pid: proc for proc in children(serve, is_daphne)}
        # 3 nodes and 2 sessions connect through the shared socket; wait for them.
        wait_for(
            lambda: sum(peer_sockets(p, port) for p in before.values()) >= 5,
            30,
            "the simulator's peers connected",
            log,
        )
        time.sleep(2.0)  # jobs in flight (the simulator runs for about 8 s)
        victim = max(before.values(), key=lambda proc: peer_sockets(proc, port))
        assert peer_sockets(victim, port) > 0
        victim.send_signal(signal.SIGUSR1)
        gone, _ = psutil.wait_procs([victim], timeout=DRAIN_GRACE_S + 5)
        assert gone, f"the drained instance did not exit within {DRAIN_GRACE_S + 5} s"
        assert sims[-1].poll() is None, "the drain happened after the simulation"
        # serve restarts the instance that left: a new daphne pid.
        wait_for(
            lambda: {p.pid for p in children(serve, is_daphne)} - set(before),
            20,
            "serve restarted the drained instance",
            log,
        )
        finish(sims[-1])
        assert re.search(r"instance-\d exited with 0; restarting", log.read_text()), tail(log)
        assert len(children(serve, is_daphne)) == 2
        wait_answering(f"{url}/readyz", process=serve, log=log)

        # 3. SIGTERM: serve drains (a connected peer is told to go elsewhere), exits 0 and
        # leaves nothing running.
        descendants = psutil.Process(serve.pid).children(recursive=True)
        assert descendants
        init = {"type": "session_init", "api_key": api_key}
        ws_url = f"ws://127.0.0.1:{port}/ws/session/"
        with connect(ws_url, proxy=None, compression=None) as peer:
            peer.send(json.dumps(init))
            assert json.loads(peer.recv(timeout=10))["type"] == "session_ready"
            stopped_at = time.monotonic()
            serve.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                peer.recv(timeout=SERVE_STOP_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        try:
            code = serve.wait(timeout=SERVE_STOP_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"serve did not stop within {SERVE_STOP_S} s\n{tail(log)}"
            ) from None
        assert code == 0, f"serve exited with {code} after {time.monotonic() - stopped_at:.1f} s"
        left = [proc for proc in descendants if alive(proc)]
        assert left == [], [(p.pid, p.cmdline()) for p in left]
        stopping = log.read_text().split("SIGTERM: draining", 1)[-1]
        assert stopping.count(" drained") == 2, tail(log)
    finally:
        for sim in sims:
            if sim.poll() is None:
                sim.kill()
                sim.communicate()
        kill_tree(serve.pid)
        for proc in SEEN.values():
            if alive(proc):
                kill_tree(proc.pid)
        SEEN.clear()
        deployment.close()
