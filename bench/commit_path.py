"""Commit-path benchmark: hot-state commits per second against raw EVALSHA round trips.

Run from the repository root (it starts or reuses the local Redis Cluster):

    .venv/bin/python bench/commit_path.py   # --processes 2 --tasks 32 --jobs 100 --rounds 5

Each of ``--processes`` spawned OS processes runs ``--tasks`` concurrent asyncio tasks; the
processes start every phase together (a barrier). Phases, repeated ``--rounds`` times in turn:

* **raw**: EVALSHA of ``bench/noop-1.lua`` (returns at once) through the same cluster client,
  on keys spread over the same kinds of slots; ``3 x jobs`` calls per task.
* **path**: per job, the three commits of the scheduling path: ``request_claim`` (request
  slot), ``slot_reserve`` (node slot) and ``job_transition`` to DISPATCHED (job slot), each
  through its typed wrapper. The job records are created before the phase, untimed, because a
  transition needs one.
* **full**: the same with ``job_create`` timed too (four scripts per job).
* **shaped**: raw EVALSHA of the trivial script again, but with the keys and arguments the
  three path scripts send (built as the wrappers build them): what redis-py costs for them,
  without the wrappers and without the scripts' own work.

A phase's rate is the sum over processes of each process's calls divided by its own elapsed
time. The ratio compares script calls per second of a path phase with raw calls per second of
the raw phase of the same round; the median over rounds is printed. Keys live under a prefix of
their own, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NOOP = Path(__file__).resolve().parent / "noop-1.lua"
NODES = 64
PHASES = ("raw", "shaped", "path", "full")


def _setup_django(prefix: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")
    os.environ["HOTSTATE_PREFIX"] = prefix
    # The benchmark's nodes send no heartbeats: keep their presence for the whole run.
    os.environ["HEARTBEAT_INTERVAL_MS"] = "3600000"


async def _worker(
    url: str, index: int, args: argparse.Namespace, barrier: Any
) -> list[dict[str, Any]]:
    from hotstate.client import build_client
    from hotstate.jobs import JobState, job_create, job_transition, request_claim
    from hotstate.keys import job_record, job_subscribers, node_slot_keys, request_binding
    from hotstate.slots import slot_reserve

    client = build_client(url)
    noop_sha = await client.script_load(NOOP.read_text())
    node_ids = [f"node-{n}" for n in range(NODES)]
    results = []

    async def create(job_id: str) -> None:
        await job_create(
            job_id=job_id,
            tenant="bench",
            request_id=job_id,
            session_id="s",
            service_id="asr",
            service_version=None,
            features=[],
            payload_json='{"audio": "x"}',
            timeout_ms=60_000,
            client=client,
        )

    async def commit(job_id: str, node_id: str, with_create: bool) -> None:
        claim = await request_claim(
            tenant="bench", request_id=job_id, job_id=job_id, lease_ms=60_000, client=client
        )
        if with_create:
            await create(claim.job_id)
        reservation = await slot_reserve(
            node_id=node_id, job_id=claim.job_id, attempt=1, service_id="asr", client=client
        )
        assert reservation.ok, reservation
        await job_transition(
            job_id=claim.job_id, attempt=1, to=JobState.DISPATCHED, node_id=node_id, client=client
        )

    async def task(phase: str, round_: int, number: int) -> int:
        calls = 0
        for j in range(args.jobs):
            job_id = f"r{round_}-p{index}-t{number}-j{j}-{phase}"
            if phase == "raw":
                for _ in range(3):
                    await client.evalsha(noop_sha, 1, job_record(f"{job_id}-{calls}"))
                    calls += 1
            elif phase == "shaped":
                # The same keys and arguments as request_claim, slot_reserve, job_transition.
                node_id = node_ids[(number + j) % NODES]
                await client.evalsha(
                    noop_sha, 1, request_binding("bench", job_id), job_id, job_id, 60_000
                )
                await client.evalsha(
                    noop_sha, 5, *node_slot_keys(node_id), job_id, 30_000, "svc:asr", "asr", "", 1
                )
                await client.evalsha(
                    noop_sha,
                    2,
                    job_record(job_id),
                    job_subscribers(job_id),
                    1,
                    "DISPATCHED",
                    node_id,
                    "",
                )
                calls += 3
            else:
                await commit(job_id, node_ids[(number + j) % NODES], phase == "full")
                calls += 4 if phase == "full" else 3
        return calls

    for round_ in range(args.rounds):
        for phase in PHASES:
            if phase == "path":
                await asyncio.gather(
                    *(
                        create(f"r{round_}-p{index}-t{t}-j{j}-path")
                        for t in range(args.tasks)
                        for j in range(args.jobs)
                    )
                )
            await asyncio.to_thread(barrier.wait, 300)
            started, cpu_started = time.perf_counter(), time.process_time()
            calls = await asyncio.gather(*(task(phase, round_, t) for t in range(args.tasks)))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            results.append(
                {
                    "round": round_,
                    "phase": phase,
                    "calls": sum(calls),
                    "jobs": args.tasks * args.jobs,
                    "elapsed": elapsed,
                    "cpu": cpu,
                }
            )
    await client.aclose()
    return results


def _process_main(
    url: str, prefix: str, index: int, args: argparse.Namespace, barrier: Any, queue: Any
) -> None:
    _setup_django(prefix)
    try:
        queue.put(asyncio.run(_worker(url, index, args, barrier)))
    except BaseException:
        # Release the other processes from the barrier and tell the parent why.
        barrier.abort()
        queue.put({"error": f"process {index}:\n{traceback.format_exc()}"})


async def _prepare(url: str) -> None:
    from hotstate.client import build_client
    from hotstate.nodes import NodeCaps, NodeLoad, node_publish

    client = build_client(url)
    caps = NodeCaps(max_jobs=1_000_000, node_version="bench", services={"asr": []})
    for n in range(NODES):
        await node_publish(
            node_id=f"node-{n}",
            channel=f"bench-{n}",
            caps=caps,
            load=NodeLoad(cpu_pct=0, mem_pct=0),
            register=True,
            client=client,
        )
    await client.aclose()


def _machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    version = next((part[2:] for part in server.split() if part.startswith("v=")), "?")
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs (nproc), {cpu}, Python {platform.python_version()}, "
        f"redis-server {version}, load average {load[0]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=32, help="concurrent tasks per process")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per task and phase")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from hotstate.localcluster import from_environment
    from tests.support.keys import delete_keys_sync

    cluster = from_environment()
    print(cluster.start())
    prefix = f"bench-{secrets.token_hex(4)}"
    _setup_django(prefix)
    print(f"{time.strftime('%a %b %d %H:%M:%S %Z %Y')}; {_machine()}")
    asyncio.run(_prepare(cluster.url))

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(args.processes)
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_process_main, args=(cluster.url, prefix, i, args, barrier, queue))
        for i in range(args.processes)
    ]
    try:
        for worker in workers:
            worker.start()
        reports = [queue.get(timeout=900) for _ in workers]
        errors = [report["error"] for report in reports if isinstance(report, dict)]
        if errors:
            print("\n".join(errors), file=sys.stderr)
            return 1
        for worker in workers:
            worker.join()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        deleted = delete_keys_sync(cluster.url, prefix)

    rates: dict[tuple[int, str], tuple[float, float]] = {}
    for round_ in range(args.rounds):
        for phase in PHASES:
            rows = [
                r
                for report in reports
                for r in report
                if r["round"] == round_ and r["phase"] == phase
            ]
            calls = sum(r["calls"] / r["elapsed"] for r in rows)
            jobs = sum(r["jobs"] / r["elapsed"] for r in rows)
            rates[(round_, phase)] = (calls, jobs)
    print(
        f"{args.processes} processes x {args.tasks} tasks, {args.jobs} jobs per task and phase, "
        f"{args.rounds} rounds; {deleted} keys deleted afterwards"
    )
    print(
        f"{'round':>5} {'raw':>8} {'shaped':>8} {'path':>8} {'full':>8}  (script calls/s)"
        f"  path jobs/s, path/raw, path/shaped, full/raw"
    )
    ratios: dict[str, list[float]] = {"path": [], "path_shaped": [], "full": []}
    for round_ in range(args.rounds):
        raw, shaped = rates[(round_, "raw")][0], rates[(round_, "shaped")][0]
        path_calls, path_jobs = rates[(round_, "path")]
        full_calls = rates[(round_, "full")][0]
        ratios["path"].append(path_calls / raw)
        ratios["path_shaped"].append(path_calls / shaped)
        ratios["full"].append(full_calls / raw)
        print(
            f"{round_:>5} {raw:>8,.0f} {shaped:>8,.0f} {path_calls:>8,.0f} {full_calls:>8,.0f}"
            f"                   {path_jobs:,.0f}, {path_calls / raw:.0%},"
            f" {path_calls / shaped:.0%}, {full_calls / raw:.0%}"
        )
    median = statistics.median
    cpu_per_call = {
        phase: median(
            sum(r["cpu"] for r in rows) / sum(r["calls"] for r in rows)
            for rows in (
                [r for report in reports for r in report if r["phase"] == phase and r["round"] == n]
                for n in range(args.rounds)
            )
        )
        for phase in PHASES
    }
    print(
        "client CPU per script call (median; barely affected by other load): "
        + ", ".join(f"{phase} {cpu_per_call[phase] * 1e6:.0f} us" for phase in PHASES)
    )
    med = {phase: median(rates[(r, phase)][0] for r in range(args.rounds)) for phase in PHASES}
    path_jobs = median(rates[(r, "path")][1] for r in range(args.rounds))
    full_jobs = median(rates[(r, "full")][1] for r in range(args.rounds))
    print(
        f"median over rounds: raw EVALSHA {med['raw']:,.0f} calls/s; shaped {med['shaped']:,.0f}"
        f" calls/s\n"
        f"  path, 3 scripts per job (claim + reserve + transition): {path_jobs:,.0f} jobs/s ="
        f" {med['path']:,.0f} script calls/s = {median(ratios['path']):.0%} of raw per script"
        f" call ({median(ratios['path']) / 3:.0%} per job), {median(ratios['path_shaped']):.0%}"
        f" of shaped\n"
        f"  full, 4 scripts per job (+ create): {full_jobs:,.0f} jobs/s ="
        f" {median(ratios['full']):.0%} of raw per script call"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
