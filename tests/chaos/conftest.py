"""Fixtures of the chaos tests: a Redis Cluster of their own, and ``serve`` on top of it.

The faults kill, pause and freeze Redis members, so these tests never touch the suite's shared
cluster: ``chaos_cluster`` is a second local cluster (3 primaries + 3 replicas) on
``CHAOS_CLUSTER_PORT`` (default: the suite's ``REDIS_CLUSTER_PORT`` + 50), its data in a
temporary folder, healed before every test and stopped at the end. ``served`` is
``manage.py serve --instances 2 --workers 1`` on it, as an operator runs it; ``run_scenario``
drives it with ``manage.py simulate --fault ...`` and returns the summary it wrote as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.test import override_settings
from redis.cluster import RedisCluster

from hotstate import keys
from hotstate.localcluster import DEFAULT_BASE_PORT, LocalCluster
from tests.e2e.harness.deployment import Deployment
from tests.e2e.harness.processes import ROOT, kill_tree, tail, wait_answering
from tests.support.ports import free_port

CHAOS_PORT = int(
    os.environ.get(
        "CHAOS_CLUSTER_PORT", int(os.environ.get("REDIS_CLUSTER_PORT", DEFAULT_BASE_PORT)) + 50
    )
)
SERVE_ENV = {"HEARTBEAT_INTERVAL_MS": "1000", "ACK_TIMEOUT": "2", "DRAIN_GRACE": "3"}
INSTANCES = 2
# The load of issue 9's measurements: 6 nodes of 4 slots, 6 sessions at 8 submits/s (48/s),
# jobs of 300 ms on average.
LOAD = [
    "--nodes", "6", "--sessions", "6", "--rate", "8", "--job-ms", "300",
    "--job-timeout-ms", "10000", "--grace", "5",
]  # fmt: skip
SCENARIO_SLACK_S = 90


@dataclass
class Served:
    deployment: Deployment
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    cluster: LocalCluster


@pytest.fixture(scope="session")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(base_port=CHAOS_PORT, data_dir=tmp_path_factory.mktemp("chaos-redis"))
    cluster.start()
    try:
        yield cluster
    finally:
        resume_members(cluster)
        cluster.stop(purge=True)


def resume_members(cluster: LocalCluster) -> None:
    """SIGCONT every member: a scenario killed in the middle of a freeze leaves them stopped."""
    for port in cluster.ports:
        pidfile = cluster.data_dir / str(port) / "redis.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGCONT)


@pytest.fixture
def served(chaos_cluster: LocalCluster, tmp_path: Path, e2e_template_db: Path) -> Iterator[Served]:
    """``serve`` with two instances and a worker on the chaos cluster, healed first (a member
    killed by the previous test is started again; all slots served)."""
    resume_members(chaos_cluster)
    chaos_cluster.start()
    deployment = Deployment(tmp_path / "serve", chaos_cluster.url, e2e_template_db, SERVE_ENV)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process, log = deployment.popen(
        "serve", "--instances", str(INSTANCES), "--workers", "1",
        "--host", "127.0.0.1", "--port", str(port),
        log_name="serve",
    )  # fmt: skip
    try:
        wait_answering(f"{url}/readyz", process=process, log=log)
        wait_for(lambda: daphnes(process) == INSTANCES, 30, f"{INSTANCES} instances", log)
        yield Served(deployment, url, process, log, chaos_cluster)
    finally:
        kill_tree(process.pid)
        deployment.close()


def daphnes(serve: subprocess.Popen[bytes]) -> int:
    count = 0
    for proc in psutil.Process(serve.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "daphne" in proc.cmdline() and proc.status() != psutil.STATUS_ZOMBIE:
                count += 1
    return count


def wait_for(condition: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s\n{tail(log)}"
        time.sleep(0.1)


def run_scenario(
    served: Served, *args: str, prefix: str, duration_s: float, name: str
) -> dict[str, Any]:
    """``manage.py simulate <LOAD> <args>`` against ``served``; the summary it wrote as JSON
    (also printed, with the time it took, for docs/faults.md). Its exit code is not checked:
    the caller asserts on the figures, so a failure says which promise broke."""
    out = served.deployment.folder / f"{name}.json"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "manage.py", "simulate", "--url", served.url, *LOAD,
            "--duration", str(duration_s), "--prefix", prefix, "--quiet", "--json", str(out),
            *args,
        ],
        cwd=ROOT,
        env=served.deployment.env,  # serve's database: the simulator makes its credentials there
        capture_output=True,
        text=True,
        timeout=duration_s + SCENARIO_SLACK_S,
        check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    print(f"\n=== {name}: simulate took {took:.1f} s, exit {done.returncode}\n{done.stdout}")
    assert out.exists(), f"simulate wrote no summary:\n{done.stdout}\n{done.stderr[-3000:]}"
    summary: dict[str, Any] = json.loads(out.read_text())
    summary["took_s"] = took
    summary["rendered"] = done.stdout + explain_missing(served, summary)
    return summary


def explain_missing(served: Served, summary: dict[str, Any]) -> str:
    """Where each job the books call missing (or unexpected) stands in Redis now (its record,
    owed follow-ups and each subscriber's outbox), read before the deployment's keys are
    deleted: a failure then says which step stopped."""
    job_ids = [
        job_id
        for violation in summary.get("violations", [])
        if violation["kind"] in ("missing_result", "unexpected_result", "max_jobs")
        for job_id in re.findall(r"job (j_[0-9a-f]+)", violation["detail"])
    ]
    request_ids = [
        request_id
        for violation in summary.get("violations", [])
        for request_id in re.findall(r"request ([^\s)]+)", violation["detail"])
    ]
    if not job_ids and not request_ids:
        return ""
    client = RedisCluster.from_url(served.cluster.url, decode_responses=True)
    lines = ["", "missing, unexpected or overbooked jobs, as Redis has them now:"]
    try:
        with override_settings(HOTSTATE_PREFIX=served.deployment.hot_prefix):
            for job_id in job_ids:
                record = client.hgetall(keys.job_record(job_id))
                shown = {k: v for k, v in record.items() if k not in ("payload", "result")}
                lines.append(f"  {job_id}: {shown or 'no record'}")
                for session in client.smembers(keys.job_subscribers(job_id)) or ():
                    if not session:
                        continue
                    outbox = client.hexists(keys.session_outbox(session), job_id)
                    taken = client.zscore(keys.session_taken(session), job_id)
                    expected = client.zscore(keys.session_expected(session), job_id)
                    lines.append(
                        f"    session {session}: in outbox {outbox}, taken at {taken}, "
                        f"expected (next check) {expected}, "
                        f"owner {client.get(keys.session_owner(session))}"
                    )
    except Exception as exc:  # a diagnosis must not hide the failure it explains
        lines.append(f"  (could not read: {exc!r})")
    finally:
        client.close()
    lines.extend(log_lines(served.log, [*job_ids, *request_ids]))
    return "\n".join(lines)


def log_lines(log: Path, ids: list[str], *, most: int = 40) -> list[str]:
    """The servers' log lines that name one of ``ids``, or a slow frame."""
    found = [
        line.rstrip()
        for line in log.read_text(errors="replace").splitlines()
        if " took " in line or any(i in line for i in ids)
    ]
    return ["", f"server log lines about them ({len(found)}):", *found[-most:]] if found else []


def assert_nothing_lost(summary: dict[str, Any]) -> None:
    """Issue 9's proof for one run: 0 lost silently, 0 delivered twice, 0 oversold, every
    accepted job completed or ended with a terminal code its session received, no broken
    promise of any other kind, and no simulated peer that gave up."""
    text = summary["rendered"]
    assert summary["missing"] == 0, f"jobs lost silently\n{text}"
    assert summary["duplicate_results"] == 0, f"results delivered twice\n{text}"
    assert summary["oversold"] == 0, f"slots oversold\n{text}"
    ended = summary["completed"] + sum(summary["failed"].values())
    assert ended == summary["accepted"], f"accepted jobs without an end\n{text}"
    assert summary["violations"] == [], text
    assert summary["problems"] == [], text


def assert_recovered(summary: dict[str, Any], *, within_s: float = 10.0) -> None:
    """The fault was injected, and ok results came back to 90 % of the pre-fault rate within
    ``within_s`` of its end."""
    fault = summary["fault"]
    text = summary["rendered"]
    assert fault is not None, text
    assert fault["failed"] is None, f"the fault could not be injected\n{text}"
    assert fault["recovery_s"] is not None, f"throughput never came back\n{text}"
    assert fault["recovery_s"] <= within_s, text
