"""Request bindings and job records: claim, create, transition, subscribe, read.

The scheduling path calls, in order: ``request_claim`` (request slot), ``job_create`` (job slot),
then ``slot_reserve`` (node slot, :mod:`hotstate.slots`) and ``job_transition(to=DISPATCHED)``.
Each is one atomic script; each is safe to repeat after a ``DependencyDown``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from django.conf import settings
from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.client import get_client
from hotstate.codes import Code
from hotstate.scripts import SCRIPTS, bounded


class JobState(StrEnum):
    CREATED = "CREATED"
    DISPATCHED = "DISPATCHED"
    ACCEPTED = "ACCEPTED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.FINISHED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)
# Transitions into these states name a node: the one assigned (DISPATCHED) or reporting.
NODE_REPORTED_STATES = frozenset(
    {JobState.DISPATCHED, JobState.ACCEPTED, JobState.RUNNING, JobState.FINISHED}
)


def request_lease_ms(timeout_ms: int) -> int:
    """PROTOCOL.md: a request stays bound for the job's timeout plus REQUEST_LEASE_GRACE_MS."""
    return timeout_ms + settings.REQUEST_LEASE_GRACE_MS


# --- request bindings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """``won``: the caller's job id is now bound; otherwise ``job_id`` is the earlier job's."""

    won: bool
    job_id: str


async def request_claim(
    *,
    tenant: str,
    request_id: str,
    job_id: str,
    lease_ms: int,
    client: RedisCluster | None = None,
) -> Claim:
    """Bind ``(tenant, request_id)`` to ``job_id`` unless it is bound; return the bound job."""
    reply = await SCRIPTS.call(
        "request_claim",
        keys=[keys.request_binding(tenant, request_id)],
        args=[job_id, lease_ms],
        client=client,
        subject=request_id,
        durable=True,
    )
    return Claim(won=reply.code is Code.CLAIMED, job_id=reply.text(0))


async def request_release(
    *, tenant: str, request_id: str, job_id: str, client: RedisCluster | None = None
) -> bool:
    """Unbind the request if ``job_id`` holds it (a rejected submit); True if it did."""
    reply = await SCRIPTS.call(
        "request_release",
        keys=[keys.request_binding(tenant, request_id)],
        args=[job_id],
        client=client,
        subject=request_id,
    )
    return reply.code is Code.RELEASED


# --- job records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobCreated:
    """``created``: this call created the job; otherwise it existed and the session subscribed."""

    created: bool
    state: JobState
    attempt: int
    node_id: str | None
    deadline_ms: int


async def job_create(
    *,
    job_id: str,
    tenant: str,
    request_id: str,
    session_id: str,
    service_id: str,
    service_version: str | None,
    features: Collection[str],
    payload_json: str,
    timeout_ms: int,
    retain_ms: int | None = None,
    client: RedisCluster | None = None,
) -> JobCreated:
    """Create the job in CREATED, attempt 1, unless it exists; subscribe ``session_id`` either way.

    The record and its subscriber set live ``retain_ms`` (default: the request lease). The
    creation reaches a replica before this returns (``durable``), so ``job_accepted`` is not
    sent for a job that a primary's failover can forget. Raises ``Forbidden`` if the job id
    exists for another tenant.
    """
    if timeout_ms < 1:
        raise ValueError(f"timeout_ms must be positive, got {timeout_ms}")
    retain = retain_ms if retain_ms is not None else request_lease_ms(timeout_ms)
    reply = await SCRIPTS.call(
        "job_create",
        keys=[keys.job_record(job_id), keys.job_subscribers(job_id)],
        args=[
            tenant,
            request_id,
            session_id,
            service_id,
            service_version or "",
            json.dumps(sorted(features)),
            payload_json,
            timeout_ms,
            retain,
        ],
        client=client,
        subject=job_id,
        durable=True,
    )
    return JobCreated(
        created=reply.code is Code.CREATED,
        state=JobState(reply.text(0)),
        attempt=reply.number(1),
        node_id=reply.text(2) or None,
        deadline_ms=reply.number(3),
    )


@dataclass(frozen=True, slots=True)
class Transition:
    """The job after ``job_transition``.

    ``applied``: this call moved the job. Otherwise it was a harmless repeat (the job was already
    in the target state for this attempt and node). ``subscribers``: on an applied move to a
    terminal state, the sessions to deliver the result to (exactly this call's caller does).
    """

    applied: bool
    state: JobState
    attempt: int
    node_id: str | None
    subscribers: tuple[str, ...] = ()


async def job_transition(
    *,
    job_id: str,
    attempt: int,
    to: JobState,
    node_id: str | None = None,
    from_states: Collection[JobState] = (),
    result_json: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    deliver: bool = True,
    client: RedisCluster | None = None,
) -> Transition:
    """Move the job to ``to``: compare-and-set on ``attempt``, ``node_id`` and ``from_states``.

    ``node_id`` is required to DISPATCHED (the node assigned) and to ACCEPTED, RUNNING and
    FINISHED (the node reporting); on other moves it is optional and, if given, must be the
    assigned node. ``to=CREATED`` is the failover: attempt + 1, no node. A terminal move stores
    ``result_json`` / ``error_code`` / ``error_message`` and, unless ``deliver`` is False (a
    submit rejected before anyone was promised the job), owes the result to the subscribers.
    Raises ``JobNotFound``,
    ``StaleAttempt``, ``Forbidden`` or ``BadState``; any of them changed nothing.
    """
    if to in NODE_REPORTED_STATES and not node_id:
        raise ValueError(f"a transition to {to} must name the node")
    if attempt < 1:
        raise ValueError(f"attempts count from 1, got {attempt}")
    reply = await SCRIPTS.call(
        "job_transition",
        keys=[keys.job_record(job_id), keys.job_subscribers(job_id)],
        args=[
            attempt,
            to.value,
            node_id or "",
            ",".join(state.value for state in from_states),
            # The outcome travels with terminal moves only: fewer arguments on the hot path.
            *(
                (result_json or "", error_code or "", error_message or "", "1" if deliver else "0")
                if to.terminal
                else ()
            ),
        ],
        client=client,
        subject=job_id,
    )
    return Transition(
        applied=reply.code is Code.APPLIED,
        state=JobState(reply.text(0)),
        attempt=reply.number(1),
        node_id=reply.text(2) or None,
        subscribers=tuple(str(session) for session in reply.values[3:]),
    )


@dataclass(frozen=True, slots=True)
class JobStatus:
    state: JobState
    attempt: int
    node_id: str | None


async def job_subscribe(
    *, job_id: str, tenant: str, session_id: str, client: RedisCluster | None = None
) -> JobStatus:
    """Add ``session_id`` to the job's subscribers and return where the job stands.

    If the returned state is terminal, the result was handed out before this subscription and
    the caller delivers it (from ``job_get``). Raises ``JobNotFound`` for an unknown job or
    another tenant's.
    """
    reply = await SCRIPTS.call(
        "job_subscribe",
        keys=[keys.job_record(job_id), keys.job_subscribers(job_id)],
        args=[tenant, session_id],
        client=client,
        subject=job_id,
    )
    return JobStatus(JobState(reply.text(0)), reply.number(1), reply.text(2) or None)


@dataclass(frozen=True, slots=True)
class JobView:
    """A job record as stored; times are epoch ms of the job's primary."""

    job_id: str
    state: JobState
    attempt: int
    node_id: str | None
    tenant: str
    request_id: str
    session_id: str
    service_id: str
    service_version: str | None
    features: tuple[str, ...]
    payload_json: str
    timeout_ms: int
    deadline_ms: int
    created_ms: int
    updated_ms: int
    result_json: str | None
    error_code: str | None
    error_message: str | None
    finished_ms: int | None
    subscribers: frozenset[str]
    # Follow-ups left owed by the moves so far ('owe:...' field -> value; see job_transition).
    owed: Mapping[str, str] = field(default_factory=dict)


async def job_get(*, job_id: str, client: RedisCluster | None = None) -> JobView | None:
    """Read a job record and its subscribers (one round trip), or None if it does not exist."""
    cluster = client or get_client()
    pipe = cluster.pipeline(transaction=False)
    pipe.hgetall(keys.job_record(job_id))
    pipe.smembers(keys.job_subscribers(job_id))
    record, subscribers = await bounded(
        "job_get", cluster, pipe.execute(), key=keys.job_record(job_id)
    )
    if not record:
        return None
    return JobView(
        job_id=job_id,
        state=JobState(record["state"]),
        attempt=int(record["attempt"]),
        node_id=record.get("node_id") or None,
        tenant=record["tenant"],
        request_id=record["request_id"],
        session_id=record["session_id"],
        service_id=record["service_id"],
        service_version=record.get("service_version") or None,
        features=tuple(json.loads(record["features"])),
        payload_json=record["payload"],
        timeout_ms=int(record["timeout_ms"]),
        deadline_ms=int(record["deadline_ms"]),
        created_ms=int(record["created_ms"]),
        updated_ms=int(record["updated_ms"]),
        result_json=record.get("result") or None,
        error_code=record.get("error_code") or None,
        error_message=record.get("error_message") or None,
        finished_ms=int(record["finished_ms"]) if record.get("finished_ms") else None,
        subscribers=frozenset(subscribers),
        owed={name: value for name, value in record.items() if name.startswith(OWED_PREFIX)},
    )


OWED_PREFIX = "owe:"
OWE_RELEASE = "owe:rel:"  # + node id = the attempt whose slot on that node is to be freed
OWE_CANCEL = "owe:cancel:"  # + node id = "attempt:reason" of the job_cancel the node is owed
OWE_DELIVER = "owe:deliver"  # = "1": the result is owed to the subscribers


async def job_settle(
    *, job_id: str, done: Mapping[str, str], client: RedisCluster | None = None
) -> int:
    """Mark owed follow-ups done (each field as it was seen); return how many are still owed.

    Raises ``JobNotFound`` if the record is gone.
    """
    reply = await SCRIPTS.call(
        "job_settle",
        keys=[keys.job_record(job_id)],
        args=[item for pair in done.items() for item in pair],
        client=client,
        subject=job_id,
    )
    return reply.number(0)
