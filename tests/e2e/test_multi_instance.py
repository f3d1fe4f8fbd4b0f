"""Issue 5: several scheduler instances act as one (DESIGN.md, "Cross-instance delivery").

Three real daphne processes (A, B, C) share one database and one Redis Cluster namespace with
``CHANNEL_LAYER=cluster``; each runs with ``SCHEDULER_ROLE=all``. Nodes are SDK ``NodeAgent``s
whose handlers record what they run; sessions are raw WebSockets, so what is asserted is what
any client sees on the wire. A node on A and sessions on B and C make every ``job_assign``
cross from the submitting instance to A, and every ``job_result`` cross back.

The drain tests each have a deployment of their own (two instances, some behind a small load
balancer standing in for nginx), since they stop one of them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from django.test import override_settings
from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from protocol import JobAccepted, JobRejected, SessionJobResult
from scheduler_sdk import RequestFailed
from scheduler_sdk.backoff import Backoff
from tests.e2e.harness.balancer import Balancer
from tests.e2e.harness.deployment import Credentials, Deployment
from tests.e2e.harness.http import job_until_terminal
from tests.e2e.harness.peers import Peers
from tests.e2e.harness.processes import Instance
from tests.e2e.harness.raw import RawSession, settle
from tests.e2e.harness.sdk import Recorder

pytestmark = pytest.mark.e2e

TENANT = "acme"
NODE_TOKENS = 4  # reused by tests in turn: each stops its nodes before the next starts
ENV = {
    "HEARTBEAT_INTERVAL_MS": "1000",
    "ACK_TIMEOUT": "1.5",
    "DRAIN_GRACE": "3",
}
RESULT_WAIT_S = 15.0


class Multi:
    def __init__(self, deployment: Deployment, credentials: Credentials) -> None:
        self.deployment = deployment
        self.credentials = credentials

    @property
    def instances(self) -> list[Instance]:
        return self.deployment.instances

    @property
    def key(self) -> str:
        return self.credentials.api_keys[TENANT]

    def token(self, n: int) -> str:
        return self.credentials.node_tokens[n]


@pytest.fixture(scope="module")
def multi(
    tmp_path_factory: pytest.TempPathFactory, redis_cluster_url: str, e2e_template_db: Path
) -> Iterator[Multi]:
    """Instances A, B and C of one deployment; stopped and their keys deleted afterwards."""
    folder = tmp_path_factory.mktemp("multi")
    deployment = Deployment(folder / "abc", redis_cluster_url, e2e_template_db, extra_env=ENV)
    try:
        credentials = deployment.credentials(nodes=NODE_TOKENS, tenants=[TENANT])
        deployment.start_instances("A", "B", "C")
        yield Multi(deployment, credentials)
    finally:
        deployment.close()


async def inbox_entries_added(redis: RedisCluster, layer_prefix: str) -> dict[str, int]:
    """``entries-added`` of every process inbox of the channel layer: how many messages ever
    crossed the layer to each process (a message to a socket of the same process never does)."""
    added = {}
    async for key in redis.scan_iter(match=f"{layer_prefix}:*:inbox", count=1000):
        info = await redis.xinfo_stream(key)
        added[key] = int(info["entries-added"])
    return added


async def node_reservations(
    redis: RedisCluster, hot_prefix: str, node_ids: Iterable[str]
) -> dict[str, int]:
    """How many slots each node holds in a deployment's hot state (keys from hotstate.keys)."""
    with override_settings(HOTSTATE_PREFIX=hot_prefix):
        names = {node_id: keys.node_reservations(node_id) for node_id in node_ids}
    return {node_id: await redis.zcard(name) for node_id, name in names.items()}


async def run_one(session: RawSession, request_id: str, service: str, payload: dict) -> dict:
    accepted = await session.submit_until_accepted(request_id, service, payload)
    result = await session.expect("job_result", job_id=accepted["job_id"], timeout=RESULT_WAIT_S)
    assert result["ok"] is True, result
    return accepted


# --- owner routing across instances ----------------------------------------------------------


async def test_jobs_cross_instances_both_ways_with_progress_and_one_result_each(
    multi: Multi, peers: Peers, service: str
) -> None:
    a, b, c = multi.instances
    recorder = Recorder(delay_s=0.2)
    agent = await peers.agent(a, multi.token(0), service, recorder, max_jobs=4)
    on_b = await peers.session(b, multi.key)
    on_c = await peers.session(c, multi.key)
    assert {on_b.instance_id, on_c.instance_id, agent.instance_id} == {
        b.instance_id,
        c.instance_id,
        a.instance_id,
    }

    submits = [(on_b, f"cross-b-{n}") for n in range(3)]
    submits += [(on_c, f"cross-c-{n}") for n in range(3)]
    accepted = await asyncio.gather(
        *(session.submit_until_accepted(rid, service, {"rid": rid}) for session, rid in submits)
    )
    for (session, rid), reply in zip(submits, accepted, strict=True):
        assert reply["node_id"] == agent.node_id
        result = await session.expect("job_result", job_id=reply["job_id"], timeout=RESULT_WAIT_S)
        assert result["ok"] is True, result
        assert result["request_id"] == rid
        assert result["result"] == {"echo": {"rid": rid}, "job_id": reply["job_id"]}
    await settle()

    for (session, rid), reply in zip(submits, accepted, strict=True):
        job_id = reply["job_id"]
        other = on_c if session is on_b else on_b
        assert len(session.results(job_id)) == 1, session.frames
        assert other.results(job_id) == [], "a result reached a session that did not submit"
        # Progress crossed too: node on A -> its instance -> the session's instance.
        progress = session.of_type("job_progress", job_id=job_id)
        assert [(p["progress"], p["data"], p["request_id"]) for p in progress] == [
            (0.5, {"halfway": job_id}, rid)
        ]
    job_ids = {reply["job_id"] for reply in accepted}
    assert len(job_ids) == len(submits)
    assert recorder.runs == Counter(dict.fromkeys(job_ids, 1))
    assert agent.stats.jobs_assigned == len(submits)
    assert agent.stats.duplicate_assigns == 0
    assert agent.stats.violations == []
    assert dict(agent.stats.errors_received) == {}


async def test_same_instance_pair_works_and_stays_off_the_channel_layer(
    multi: Multi, peers: Peers, service: str, redis: RedisCluster
) -> None:
    """Node and session on C: the job runs, and nothing crosses Redis Streams for it (the
    channel layer's local path); the same node with a session on B does cross (the control)."""
    _, b, c = multi.instances
    recorder = Recorder(delay_s=0.1)
    await peers.agent(c, multi.token(1), service, recorder, max_jobs=2)
    on_c = await peers.session(c, multi.key)
    await run_one(on_c, "local-warm", service, {})  # C's snapshot knows the node now

    layer_prefix = multi.deployment.layer_prefix
    before = sum((await inbox_entries_added(redis, layer_prefix)).values())
    for n in range(3):
        accepted = await run_one(on_c, f"local-{n}", service, {"n": n})
        assert len(on_c.of_type("job_progress", job_id=accepted["job_id"])) == 1
    local = sum((await inbox_entries_added(redis, layer_prefix)).values())
    assert local == before, "a job between a node and a session of one instance used Redis"

    on_b = await peers.session(b, multi.key)
    await run_one(on_b, "local-control", service, {})
    crossed = sum((await inbox_entries_added(redis, layer_prefix)).values())
    # job_assign B -> C, then progress and the result's delivery C -> B.
    assert crossed >= local + 3


async def test_same_request_id_on_two_instances_at_once_makes_one_job(
    multi: Multi, peers: Peers, service: str
) -> None:
    a, b, c = multi.instances
    recorder = Recorder(delay_s=0.3, progress=False)
    agent = await peers.agent(a, multi.token(2), service, recorder, max_jobs=4)
    on_b = await peers.session(b, multi.key)
    on_c = await peers.session(c, multi.key)
    # Both instances' snapshots know the node before the race.
    await asyncio.gather(
        run_one(on_b, "dup-warm-b", service, {}), run_one(on_c, "dup-warm-c", service, {})
    )
    warm_jobs = agent.stats.jobs_assigned

    races = [f"dup-{n}" for n in range(4)]
    for rid in races:
        reply_b, reply_c = await asyncio.gather(
            on_b.submit_until_accepted(rid, service, {"rid": rid}, retry=()),
            on_c.submit_until_accepted(rid, service, {"rid": rid}, retry=()),
        )
        assert reply_b["job_id"] == reply_c["job_id"], (reply_b, reply_c)
        assert reply_b["node_id"] == reply_c["node_id"] == agent.node_id
        for session in (on_b, on_c):
            result = await session.expect(
                "job_result", job_id=reply_b["job_id"], timeout=RESULT_WAIT_S
            )
            assert result["ok"] is True and result["request_id"] == rid, result
    await settle()

    race_jobs = {on_b.of_type("job_accepted", request_id=rid)[0]["job_id"] for rid in races}
    assert len(race_jobs) == len(races)
    for job_id in race_jobs:
        assert recorder.runs[job_id] == 1
        # Each session that submitted the request gets the one result, once.
        assert len(on_b.results(job_id)) == len(on_c.results(job_id)) == 1
    # One job_assign per job: no second job, no second dispatch of one attempt.
    assert agent.stats.jobs_assigned - warm_jobs == len(races)
    assert agent.stats.duplicate_assigns == 0


async def test_session_resumed_on_another_instance_gets_the_result_finished_while_away(
    multi: Multi, peers: Peers, service: str
) -> None:
    a, b, c = multi.instances
    gate = asyncio.Event()
    recorder = Recorder(delay_s=0.0, progress=False, gate=gate)
    await peers.agent(a, multi.token(3), service, recorder, max_jobs=2)
    on_b = await peers.session(b, multi.key)
    accepted = await on_b.submit_until_accepted("away-1", service, {"x": 1})
    job_id = accepted["job_id"]
    await asyncio.wait_for(recorder.started.wait(), RESULT_WAIT_S)
    assert recorder.runs[job_id] == 1
    await on_b.close()  # the session leaves B while its job runs on A's node

    gate.set()
    body = await job_until_terminal(a.url, multi.key, job_id, timeout=RESULT_WAIT_S)
    assert body["status"] == "FINISHED", body

    on_c = await peers.session(c, multi.key, session_id=on_b.session_id)
    assert on_c.session_id == on_b.session_id, "the session was not resumed"
    assert on_c.instance_id == c.instance_id
    result = await on_c.expect("job_result", job_id=job_id)
    assert result["ok"] is True and result["result"]["echo"] == {"x": 1}, result
    await settle()
    assert len(on_c.results(job_id)) == 1
    assert on_b.results(job_id) == []


async def test_max_jobs_holds_under_concurrent_submits_from_two_instances(
    multi: Multi, peers: Peers, service: str
) -> None:
    a, b, c = multi.instances
    limits = {"A": 2, "B": 1}
    recorders = {name: Recorder(delay_s=0.15, progress=False) for name in limits}
    agents = {
        "A": await peers.agent(a, multi.token(0), service, recorders["A"], max_jobs=limits["A"]),
        "B": await peers.agent(b, multi.token(1), service, recorders["B"], max_jobs=limits["B"]),
    }
    sessions = [await peers.session(b, multi.key), await peers.session(c, multi.key)]
    # Both snapshots know both nodes before the contention (UNKNOWN_SERVICE until then).
    warm = await asyncio.gather(
        *(run_one(s, f"max-warm-{i}", service, {}) for i, s in enumerate(sessions))
    )
    marks = [len(s.frames) for s in sessions]

    async def submitter(session: RawSession, name: str) -> list[str]:
        job_ids = []
        for n in range(3):
            accepted = await run_one(session, f"max-{name}-{n}", service, {})
            job_ids.append(accepted["job_id"])
        return job_ids

    # Three submitters per session keep more jobs wanted than the 3 slots there are.
    batches = await asyncio.gather(
        *(submitter(s, f"{i}-{k}") for i, s in enumerate(sessions) for k in range(3))
    )
    await settle()

    job_ids = [job_id for batch in batches for job_id in batch]
    assert len(set(job_ids)) == 18
    for job_id in job_ids:
        assert sum(len(s.results(job_id)) for s in sessions) == 1
    runs = recorders["A"].runs + recorders["B"].runs
    assert runs == Counter(dict.fromkeys([*job_ids, *(w["job_id"] for w in warm)], 1))
    for name, agent in agents.items():
        assert agent.stats.violations == [], name
        assert agent.stats.max_held_seen <= limits[name], name
        assert recorders[name].max_running <= limits[name], name
    # The limit was reached, so the test could have seen it broken.
    assert recorders["A"].max_running == limits["A"]
    rejected = [
        f
        for s, mark in zip(sessions, marks, strict=True)
        for f in s.frames[mark:]
        if f["type"] == "job_rejected"
    ]
    assert {f["code"] for f in rejected} <= {"NO_AVAILABLE_NODE"}, rejected


# --- draining one instance under load --------------------------------------------------------


DRAIN_GRACE_S = 3.0
DRAIN_ENV = {**ENV, "DRAIN_GRACE": str(DRAIN_GRACE_S)}
DRAIN_NODES = 4
DRAIN_SESSIONS = 4
SUBMITTERS_PER_SESSION = 2
LOAD_BEFORE_S = 2.5
LOAD_AFTER_S = 2.0


async def test_draining_an_instance_under_load_loses_no_accepted_job(
    multi: Multi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    service: str,
    redis: RedisCluster,
) -> None:
    """Two instances behind a load balancer, nodes and sessions on both, jobs flowing; SIGUSR1
    drains A: its sockets close with 1012, its peers reconnect to B through the balancer
    (sessions resume and re-send unanswered submits), every accepted job gets exactly one
    result, and A exits 0 within DRAIN_GRACE plus a few seconds."""
    caplog.set_level(logging.INFO, logger="scheduler_sdk")
    # A copy of the module's database, so that its node tokens and API key work here too.
    deployment = Deployment(
        tmp_path / "drain", multi.deployment.redis_url, multi.deployment.db, DRAIN_ENV
    )
    balancer: Balancer | None = None
    connected = Peers()  # closed before the balancer and the instances go
    try:
        a, b = deployment.start_instances("A", "B")
        balancer = Balancer([a, b])
        await balancer.start()
        recorders = [Recorder(delay_s=0.4, progress=False) for _ in range(DRAIN_NODES)]
        backoff = Backoff(initial_s=0.1, max_s=1.0)
        agents = [
            await connected.agent(
                balancer, multi.token(n), service, recorder, max_jobs=3, backoff=backoff
            )
            for n, recorder in enumerate(recorders)
        ]
        results: list[Counter[str]] = [Counter() for _ in range(DRAIN_SESSIONS)]
        clients = [
            await connected.client(
                balancer,
                multi.key,
                backoff=backoff,
                on_result=lambda r, c=results[n]: c.update([r.job_id]),
            )
            for n in range(DRAIN_SESSIONS)
        ]
        on_a = {id(p) for p in [*agents, *clients] if p.instance_id == a.instance_id}
        assert {p.instance_id for p in agents} == {a.instance_id, b.instance_id}
        assert {c.instance_id for c in clients} == {a.instance_id, b.instance_id}
        watcher = await connected.session(a, multi.key)  # sees A's close code as sent

        accepted: dict[str, tuple[int, str]] = {}  # request_id -> (session, job_id)
        outcomes: dict[str, SessionJobResult] = {}
        failures: list[str] = []
        stop = asyncio.Event()

        async def submitter(n: int, k: int) -> None:
            client, count = clients[n], 0
            while not stop.is_set():
                rid = f"drain-{n}-{k}-{count}"
                while True:
                    try:
                        reply = await client.submit(
                            rid, service, {"rid": rid}, timeout_ms=20_000, reply_timeout_s=20
                        )
                    except (RequestFailed, TimeoutError) as exc:
                        failures.append(f"{rid}: {exc!r}")
                        return
                    if isinstance(reply, JobAccepted):
                        break
                    assert isinstance(reply, JobRejected)
                    if reply.code not in ("NO_AVAILABLE_NODE", "RATE_LIMITED"):
                        failures.append(f"{rid}: rejected {reply.code} {reply.message}")
                        return
                    await asyncio.sleep(0.1)  # not bound: the same id is judged afresh
                accepted[rid] = (n, reply.job_id)
                try:
                    outcomes[rid] = await client.result(reply.job_id, timeout_s=30)
                except TimeoutError:
                    failures.append(f"{rid}: no result for job {reply.job_id} within 30 s")
                    return
                count += 1

        load = [
            asyncio.create_task(submitter(n, k))
            for n in range(DRAIN_SESSIONS)
            for k in range(SUBMITTERS_PER_SESSION)
        ]
        await asyncio.sleep(LOAD_BEFORE_S)
        before_drain = len(accepted)
        # One more submitter per session, whose first submits leave just as the drain starts:
        # some are answered by nobody and must be re-sent on the next connection.
        load += [
            asyncio.create_task(submitter(n, SUBMITTERS_PER_SESSION)) for n in range(DRAIN_SESSIONS)
        ]
        await asyncio.sleep(0)
        drained_at = time.monotonic()
        a.process.send_signal(signal.SIGUSR1)
        code = await asyncio.to_thread(a.wait_exit, DRAIN_GRACE_S + 5)
        exit_s = time.monotonic() - drained_at
        accepted_at_exit = len(accepted)
        await asyncio.sleep(LOAD_AFTER_S)  # the load goes on, on B only
        node_ids = [agent.node_id for agent in agents]
        busy = await node_reservations(redis, deployment.hot_prefix, node_ids)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 45)
        await settle()

        assert code == 0, f"A exited with {code} after {exit_s:.1f} s\n{deployment.logs()}"
        assert watcher.close_code == 1012
        assert failures == [], f"{failures}\n{deployment.logs()}"
        assert before_drain > 0 and len(accepted) > accepted_at_exit, "no load around the drain"
        for rid, (n, job_id) in accepted.items():
            assert results[n][job_id] == 1, (rid, job_id, results[n][job_id])
            assert outcomes[rid].ok is True, outcomes[rid]
        for n, counted in enumerate(results):
            assert set(counted) <= {job_id for m, job_id in accepted.values() if m == n}
        # Everyone is on B now; A's peers got there by reconnecting (close 1012).
        for agent in agents:
            assert agent.connected and agent.instance_id == b.instance_id
            assert agent.stats.violations == []
        for client in clients:
            assert client.instance_id == b.instance_id
            if id(client) in on_a:
                assert client.resumed and client.stats.resumed >= 1
        closes_1012 = [r for r in caplog.records if "(close 1012" in r.getMessage()]
        assert len(closes_1012) >= len(on_a), [r.getMessage() for r in caplog.records]
        assert balancer.routed[b.port] > 0
        runs = sum((recorder.done for recorder in recorders), Counter())
        assert set(runs) >= {job_id for _, job_id in accepted.values()}
        # Every slot came back: no reservation outlived its job (a leak would hold a slot
        # until RESERVATION_TTL).
        held = await node_reservations(redis, deployment.hot_prefix, node_ids)
        assert sum(busy.values()) > 0 and held == dict.fromkeys(node_ids, 0), (busy, held)
    finally:
        await connected.close()
        if balancer is not None:
            await balancer.close()
        deployment.close()


async def until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)


BUSY_RATE_JOBS_S = 12  # 3 frames per job: 36 frames/s, under the 50/s limit
BUSY_RECENT_RESULTS = 110  # results the node sent in the last 10 s when its instance drains
BUSY_JOB_TIMEOUT_MS = 4000  # a job whose result is lost ends TIMED_OUT this soon
BUSY_RESULTS_AFTER = 12  # jobs the node finishes on its new instance before the load stops


async def test_a_busy_node_moved_by_a_drain_gets_every_result_through(
    multi: Multi, tmp_path: Path, service: str
) -> None:
    """A node running about 12 jobs/s (well within the frame limit) when its instance drains:
    it reconnects to the other instance through the balancer, and every job it was given ends
    with its result.

    Its backlog after the reconnect (the results of its last 10 s, resent, and what finished
    meanwhile) is more than the scheduler's burst of 100 frames; sent at once, the tail was
    refused with RATE_LIMITED and finished jobs ended TIMED_OUT (fixed in 631ef1f)."""
    deployment = Deployment(
        tmp_path / "busy", multi.deployment.redis_url, multi.deployment.db, DRAIN_ENV
    )
    balancer: Balancer | None = None
    connected = Peers()
    try:
        first, second = deployment.start_instances("A", "B")
        balancer = Balancer([first, second])
        await balancer.start()
        recorder = Recorder(delay_s=0.2, progress=False)
        agent = await connected.agent(
            balancer,
            multi.token(0),
            service,
            recorder,
            max_jobs=3,
            backoff=Backoff(initial_s=0.1, max_s=1.0),
        )
        # The node's instance drains; the sessions are on the other one, which stays.
        busy, other = (first, second) if agent.instance_id == first.instance_id else (second, first)
        assert agent.instance_id == busy.instance_id
        sessions = [await connected.session(other, multi.key) for _ in range(2)]
        accepted: list[tuple[RawSession, str]] = []
        unanswered: list[str] = []  # jobs without a result within RESULT_WAIT_S
        stop = asyncio.Event()

        async def submitter(session: RawSession, name: str) -> None:
            loop, count = asyncio.get_running_loop(), 0
            while not stop.is_set():
                started = loop.time()
                reply = await session.submit_until_accepted(
                    f"busy-{name}-{count}", service, {}, timeout_ms=BUSY_JOB_TIMEOUT_MS
                )
                accepted.append((session, reply["job_id"]))
                try:
                    await session.expect(
                        "job_result", job_id=reply["job_id"], timeout=RESULT_WAIT_S
                    )
                except AssertionError:
                    unanswered.append(f"{reply['job_id']} accepted at {started:.1f}")
                    return
                count += 1
                # Paced, not waiting for anything: 4 submitters at most 3 jobs/s each.
                await asyncio.sleep(max(0.0, 4 / BUSY_RATE_JOBS_S - (loop.time() - started)))

        load = [
            asyncio.create_task(submitter(session, f"{i}-{k}"))
            for i, session in enumerate(sessions)
            for k in range(2)
        ]

        def busy_enough() -> bool:
            assert not unanswered, f"{unanswered}\n{deployment.logs()[-8000:]}"
            assert not any(task.done() for task in load), [t for t in load if t.done()]
            return recorder.finished_within(9.5) >= BUSY_RECENT_RESULTS

        await until(busy_enough, timeout=30, what="the node getting busy enough")
        drained_at = asyncio.get_running_loop().time()
        busy.process.send_signal(signal.SIGUSR1)
        code = await asyncio.to_thread(busy.wait_exit, DRAIN_GRACE_S + 5)
        assert code == 0, f"the drained instance exited with {code}\n{deployment.logs()}"
        finished_at_exit = sum(recorder.done.values())
        await until(
            lambda: (
                agent.instance_id == other.instance_id
                and sum(recorder.done.values()) >= finished_at_exit + BUSY_RESULTS_AFTER
            ),
            timeout=RESULT_WAIT_S,
            what="the node working on the other instance",
        )
        stop.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*load, return_exceptions=True), 45)

        errors = [o for o in outcomes if isinstance(o, BaseException)]
        results = [s.results(job_id) for s, job_id in accepted]
        failed = [r for r in results if len(r) != 1 or r[0]["ok"] is not True]
        assert not errors and not failed and not unanswered, (
            f"{len(failed)} of {len(accepted)} jobs without one ok result; the node ran "
            f"{sum(recorder.done.values())} jobs and got error frames "
            f"{dict(agent.stats.errors_received)}; {failed[:3]} {errors[:3]}; drained at "
            f"{drained_at:.1f}, unanswered: {unanswered}\n{deployment.logs()[-8000:]}"
        )
        assert agent.stats.violations == []
    finally:
        await connected.close()
        if balancer is not None:
            await balancer.close()
        deployment.close()


HEALTH_PROBES = 16
# A drained instance exits once daphne stops, not on core.drain's watchdog (EXIT_GRACE_S, 3 s).
PROMPT_EXIT_S = 2.5
READYZ_REQUEST = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def _probe_readyz(port: int) -> int | None:
    """One load-balancer health check: GET /readyz, read the status line, hang up; the status
    (None when refused, cut or unanswered within a second)."""
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(READYZ_REQUEST)
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None  # draining, or gone: what a balancer sees then
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


async def test_a_drained_instance_exits_while_health_checks_keep_coming(
    tmp_path: Path, redis_cluster_url: str, e2e_template_db: Path
) -> None:
    """A load balancer keeps probing /readyz while an instance drains (that is how it learns of
    the drain), so HTTP requests are in flight when daphne stops; one that arrives then used to
    stay parked in an asgiref thread and keep the process alive for good, even on SIGTERM
    (46e7147 pinned it). The instance must exit 0, and as soon as daphne stops."""
    deployment = Deployment(tmp_path / "probed", redis_cluster_url, e2e_template_db, DRAIN_ENV)
    stop = asyncio.Event()
    probes: list[asyncio.Task[None]] = []
    answers: Counter[int | None] = Counter()
    a: Instance | None = None
    try:
        (a,) = deployment.start_instances("A")
        port = a.port

        async def probe() -> None:
            while not stop.is_set():
                answers[await _probe_readyz(port)] += 1

        probes = [asyncio.create_task(probe()) for _ in range(HEALTH_PROBES)]
        await until(lambda: answers[200] >= HEALTH_PROBES, timeout=10, what="probes answered")
        drained_at = time.monotonic()
        a.process.send_signal(signal.SIGUSR1)
        code = await asyncio.to_thread(a.wait_exit, DRAIN_GRACE_S + 5)
        exit_s = time.monotonic() - drained_at
        assert code == 0, f"the drained instance did not exit (code {code}):\n{a.log()[-4000:]}"
        # Whether a probe caught the short drain (503) or only the refusals after it is a race;
        # what matters is that probes were in flight throughout, and the process still left.
        assert set(answers) <= {200, 503, None}, answers
        assert exit_s < PROMPT_EXIT_S, f"exited {exit_s:.1f} s after SIGUSR1:\n{a.log()[-4000:]}"
    finally:
        stop.set()
        await asyncio.gather(*probes)
        if a is not None and a.process.poll() is None:
            a.process.kill()  # a hung one ignores SIGTERM too: no need to wait for that
        deployment.close()
