"""Property test: random interleavings of job transitions from several actors, on the real cluster.

Actors are the scheduler (cancel, timeouts, failover) and two nodes. Hypothesis drives a state
machine whose steps are single transitions or races of 2-3 concurrent transitions. A model of
the rules predicts each outcome; a race must match the model in at least one serial order (the
cluster linearises scripts). Independently of the model, every step checks the invariants:
a job reaches at most one terminal state, a terminal state never changes, every applied move is
an edge of the documented FSM, attempts only grow by one per failover, and a refusal changes
nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from hotstate import keys
from hotstate.client import build_client
from hotstate.codes import BadState, Forbidden, JobNotFound, Refused, StaleAttempt
from hotstate.jobs import NODE_REPORTED_STATES, JobState, job_transition
from hotstate.tests.helpers import new_job

S = JobState
TERMINAL = {S.FINISHED, S.FAILED, S.CANCELLED, S.TIMED_OUT}
# PROTOCOL.md's life cycle, spelled out independently of hotstate.jobs.TRANSITIONS.
EDGES = {
    (S.CREATED, S.DISPATCHED),
    (S.DISPATCHED, S.ACCEPTED),
    (S.ACCEPTED, S.RUNNING),
    (S.RUNNING, S.FINISHED),
    (S.ACCEPTED, S.FINISHED),
    (S.DISPATCHED, S.FINISHED),  # a result before the ack is an implicit ack
    *((s, S.CREATED) for s in (S.DISPATCHED, S.ACCEPTED, S.RUNNING)),
    *(
        (s, end)
        for s in (S.CREATED, S.DISPATCHED, S.ACCEPTED, S.RUNNING)
        for end in (S.FAILED, S.CANCELLED, S.TIMED_OUT)
    ),
}
ACTORS = (None, "nA", "nB")  # None: the scheduler itself
FROM_STATES = ((), (S.DISPATCHED,), (S.DISPATCHED, S.ACCEPTED, S.RUNNING), (S.RUNNING,))


@dataclass(frozen=True)
class Model:
    state: JobState = S.CREATED
    attempt: int = 1
    node: str | None = None


@dataclass(frozen=True)
class Op:
    actor: str | None
    to: JobState
    attempt_offset: int
    from_states: tuple[JobState, ...]

    def attempt(self, model: Model) -> int:
        return max(1, model.attempt + self.attempt_offset)

    def node(self) -> str | None:
        # Moves into node states always name a node; the scheduler picks nA to dispatch.
        return self.actor or ("nA" if self.to in NODE_REPORTED_STATES else None)


def predict(model: Model, op: Op, attempt: int) -> tuple[str, Model]:
    """The documented rules, in the documented order of checks; ``attempt`` is the one sent."""
    node = op.node()
    if attempt != model.attempt:
        return "STALE_ATTEMPT", model
    if node and op.to is not S.DISPATCHED and node != model.node:
        return "FORBIDDEN", model
    if model.state is op.to and op.to is not S.CREATED and (node is None or node == model.node):
        return "DUPLICATE", model
    if op.from_states and model.state not in op.from_states:
        return "BAD_STATE", model
    if (model.state, op.to) not in EDGES:
        return "BAD_STATE", model
    if op.to is S.CREATED:
        return "APPLIED", Model(S.CREATED, model.attempt + 1, None)
    if op.to is S.DISPATCHED:
        return "APPLIED", replace(model, state=S.DISPATCHED, node=node)
    return "APPLIED", replace(model, state=op.to)


REFUSAL_CODES = {
    JobNotFound: "NOT_FOUND",
    StaleAttempt: "STALE_ATTEMPT",
    Forbidden: "FORBIDDEN",
    BadState: "BAD_STATE",
}

ops = st.builds(
    Op,
    actor=st.sampled_from(ACTORS),
    to=st.sampled_from(list(JobState)),
    attempt_offset=st.sampled_from([0, 0, 0, 0, -1, 1]),
    from_states=st.sampled_from(FROM_STATES),
)


class JobMachine(RuleBasedStateMachine):
    url = ""
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = build_client(self.url)
        self.models: dict[str, Model] = {}
        self.terminal_moves: dict[str, int] = {}

    def run(self, coroutine):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    async def _call(self, job_id: str, op: Op, attempt: int) -> tuple[str, object]:
        try:
            result = await job_transition(
                job_id=job_id,
                attempt=attempt,
                to=op.to,
                node_id=op.node(),
                from_states=op.from_states,
                error_code="X" if op.to in TERMINAL else None,
                client=self.client,
            )
        except Refused as refusal:
            return REFUSAL_CODES[type(refusal)], refusal
        return ("APPLIED" if result.applied else "DUPLICATE"), result

    def record(self, job_id: str) -> dict[str, str]:
        return self.run(self.client.hgetall(keys.job_record(job_id)))

    def observe(
        self, job_id: str, before: Model, codes: list[str], ops_: list[Op], attempts: list[int]
    ) -> None:
        """Invariants that hold whatever the model says."""
        state = before
        for code, op, attempt in zip(codes, ops_, attempts, strict=True):
            if code != "APPLIED":
                continue
            assert (state.state, op.to) in EDGES, f"{state.state} -> {op.to} is not an edge"
            assert state.state not in TERMINAL
            if op.to in TERMINAL:
                self.terminal_moves[job_id] += 1
            assert attempt == state.attempt, "a move with a stale attempt applied"
            _, state = predict(state, op, attempt)
        assert self.terminal_moves[job_id] <= 1, "a job reached two terminal states"

    @rule(target=jobs)
    def create(self) -> str:
        job_id = f"fsm-{uuid.uuid4().hex[:12]}"
        self.run(new_job(self.client, job_id))
        self.models[job_id] = Model()
        self.terminal_moves[job_id] = 0
        return job_id

    @rule(job_id=jobs, op=ops)
    def transition(self, job_id: str, op: Op) -> None:
        model = self.models[job_id]
        before = self.record(job_id)
        attempt = op.attempt(model)
        code, _ = self.run(self._call(job_id, op, attempt))
        expected, after = predict(model, op, attempt)
        assert code == expected, f"{model} {op}: got {code}, the rules say {expected}"
        if code != "APPLIED":
            assert self.record(job_id) == before, "a refused or repeated move changed the job"
        self.observe(job_id, model, [code], [op], [attempt])
        self.models[job_id] = after

    @rule(job_id=jobs, race=st.lists(ops, min_size=2, max_size=3))
    def concurrent(self, job_id: str, race: list[Op]) -> None:
        model = self.models[job_id]
        # Every racer acts on the job as it stood before the race.
        attempts = [op.attempt(model) for op in race]

        async def together() -> list[tuple[str, object]]:
            return await asyncio.gather(
                *(
                    self._call(job_id, op, attempt)
                    for op, attempt in zip(race, attempts, strict=True)
                )
            )

        codes = [code for code, _ in self.run(together())]
        # Linearisable: some serial order of the race gives exactly these outcomes.
        for order in itertools.permutations(range(len(race))):
            state, predicted = model, [""] * len(race)
            for index in order:
                predicted[index], state = predict(state, race[index], attempts[index])
            if predicted == codes:
                self.observe(
                    job_id,
                    model,
                    [codes[i] for i in order],
                    [race[i] for i in order],
                    [attempts[i] for i in order],
                )
                self.models[job_id] = state
                return
        raise AssertionError(f"{model} {race}: {codes} match no serial order")

    @invariant()
    def stored_jobs_match_the_model(self) -> None:
        for job_id, model in self.models.items():
            stored = self.record(job_id)
            assert (stored["state"], int(stored["attempt"]), stored["node_id"] or None) == (
                model.state.value,
                model.attempt,
                model.node,
            )


def test_random_interleavings_follow_the_fsm(redis_cluster_url: str, hot_prefix: str) -> None:
    JobMachine.url = redis_cluster_url
    run_state_machine_as_test(
        JobMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
