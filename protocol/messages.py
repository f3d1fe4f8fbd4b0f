"""One pydantic model per message type of PROTOCOL.md.

Conventions every model follows (see ``protocol/__init__.py`` for the reasons):

- ``strict``: no coercion. An id sent as a number, ``"5"`` for an integer, ``5.0`` for an
  ``*_ms`` field or ``1`` for a boolean is a validation failure, not a guess.
- ``extra="ignore"``: unknown fields are dropped, so a peer written against a later protocol
  version that added optional fields still talks to this one (tolerant reader).
- ``frozen``: a parsed frame is a value; nothing edits it on its way through the scheduler.
- The ``type`` tag has its value as default, so code builds frames without naming it.

Where the same ``type`` exists on both links with different fields (``job_progress``,
``job_result``, ``job_cancel``), the class name carries the link: ``NodeJobResult`` is the one a
node sends, ``SessionJobResult`` the one a session receives.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from protocol.codes import CANCEL_REASONS, REJECT_CODES, ErrorCode

# Integers stay within the range every JSON reader (and Redis Lua, whose numbers are doubles)
# represents exactly, as I-JSON (RFC 7493) recommends.
MAX_SAFE_INT = 2**53 - 1

Id = Annotated[str, Field(min_length=1)]
"""``node_id``, ``job_id``, ``session_id``, ``request_id``, ``instance_id``: non-empty strings."""
Secret = Annotated[str, Field(min_length=1)]
EpochMs = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
"""Integer epoch milliseconds."""
DurationMs = Annotated[int, Field(gt=0, le=MAX_SAFE_INT)]
"""A positive integer number of milliseconds (intervals, timeouts)."""
Count = Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]
"""``max_jobs`` and ``attempt``: integers from 1."""
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
JsonObject = dict[str, Any]
"""``payload``, ``result``, ``data``: any JSON object, passed through untouched."""


def _one_of(allowed: frozenset[ErrorCode]) -> AfterValidator:
    names = ", ".join(sorted(allowed))

    def check(code: ErrorCode) -> ErrorCode:
        if code not in allowed:
            raise ValueError(f"must be one of {names}")
        return code

    return AfterValidator(check)


RejectCode = Annotated[ErrorCode, _one_of(REJECT_CODES)]
CancelReason = Annotated[ErrorCode, _one_of(CANCEL_REASONS)]


class Frame(BaseModel):
    """Base of every message and of the objects nested in them."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# --- objects nested in messages -------------------------------------------------------------


class ServiceRef(Frame):
    """``{id, version?}``: a service a node offers or a job asks for."""

    id: Id
    version: str | None = None


class Resources(Frame):
    """Node load as percentages 0 to 100; ``gpu_pct`` only when the node can measure it."""

    cpu_pct: Percent
    gpu_pct: Percent | None = None
    mem_pct: Percent


class JobError(Frame):
    """``error`` of a ``job_result``: the node's own code, or a scheduler code."""

    code: Annotated[str, Field(min_length=1)]
    message: str


class ErrorRef(Frame):
    """What could be read from the frame an ``error`` is about."""

    type: str | None = None
    request_id: str | None = None
    job_id: str | None = None


# --- both links -------------------------------------------------------------------------------


class Ping(Frame):
    type: Literal["ping"] = "ping"
    ts_ms: EpochMs | None = None


class Pong(Frame):
    """Echoes the ``ts_ms`` of the ping (the scheduler's clock when the ping had none)."""

    type: Literal["pong"] = "pong"
    ts_ms: EpochMs


class Error(Frame):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    ref: ErrorRef | None = None


# --- node ⇄ scheduler ---------------------------------------------------------------------------


class NodeRegister(Frame):
    """N→S, first frame: authenticates and declares capabilities."""

    type: Literal["node_register"] = "node_register"
    token: Secret
    version: str
    services: list[ServiceRef]
    features: list[str]
    max_jobs: Count
    resources: Resources
    region: str | None = None


class NodeRegistered(Frame):
    """S→N: accepted."""

    type: Literal["node_registered"] = "node_registered"
    node_id: Id
    heartbeat_interval_ms: DurationMs
    instance_id: Id


class NodeHeartbeat(Frame):
    """N→S: liveness and load; capability fields only when they changed."""

    type: Literal["node_heartbeat"] = "node_heartbeat"
    resources: Resources
    running: list[Id]
    services: list[ServiceRef] | None = None
    features: list[str] | None = None
    max_jobs: Count | None = None


class JobAssign(Frame):
    """S→N: run this job; every reply carries the same ``attempt``."""

    type: Literal["job_assign"] = "job_assign"
    job_id: Id
    attempt: Count
    service: ServiceRef
    features: list[str]
    payload: JsonObject
    deadline_ms: EpochMs


class JobAck(Frame):
    """N→S: received and queued on the node."""

    type: Literal["job_ack"] = "job_ack"
    job_id: Id
    attempt: Count


class JobStarted(Frame):
    """N→S: actually running."""

    type: Literal["job_started"] = "job_started"
    job_id: Id
    attempt: Count


class NodeJobProgress(Frame):
    """N→S ``job_progress``: optional, relayed to the session."""

    type: Literal["job_progress"] = "job_progress"
    job_id: Id
    attempt: Count
    progress: Fraction
    data: JsonObject | None = None


class NodeJobResult(Frame):
    """N→S ``job_result``: final; repeating it is harmless."""

    type: Literal["job_result"] = "job_result"
    job_id: Id
    attempt: Count
    ok: bool
    result: JsonObject | None = None
    error: JobError | None = None


class ModelNotAvailable(Frame):
    """N→S: the node cannot serve ``service`` now (for the job named, if any)."""

    type: Literal["model_not_available"] = "model_not_available"
    job_id: Id | None = None
    attempt: Count | None = None
    service: ServiceRef
    reason: str

    @model_validator(mode="after")
    def _attempt_with_job(self) -> Self:
        if self.job_id is not None and self.attempt is None:
            raise ValueError("attempt is required with job_id")
        return self


class NodeDrain(Frame):
    """N→S: stop sending new jobs; running ones finish."""

    type: Literal["node_drain"] = "node_drain"


class NodeJobCancel(Frame):
    """S→N ``job_cancel``: stop working on it; no result is expected."""

    type: Literal["job_cancel"] = "job_cancel"
    job_id: Id
    attempt: Count
    reason: CancelReason


# --- session ⇄ scheduler ------------------------------------------------------------------------


# At most this many job ids in ``session_init.awaiting``.
MAX_AWAITING = 1000


class SessionInit(Frame):
    """C→S, first frame: authenticates; with ``session_id``, asks to resume that session.

    ``awaiting``: on a resume, the accepted jobs whose result the client has not received; one
    sent on the old socket that never arrived is sent again.
    """

    type: Literal["session_init"] = "session_init"
    api_key: Secret
    session_id: Id | None = None
    awaiting: list[Id] | None = Field(default=None, max_length=MAX_AWAITING)


class SessionReady(Frame):
    type: Literal["session_ready"] = "session_ready"
    session_id: Id
    instance_id: Id


class JobSubmit(Frame):
    """C→S: submit a job; ``request_id`` is the tenant's idempotency key.

    ``timeout_ms`` is only checked to be positive here; its maximum is a server setting.
    """

    type: Literal["job_submit"] = "job_submit"
    request_id: Id
    service: ServiceRef
    features: list[str] | None = None
    payload: JsonObject
    timeout_ms: DurationMs | None = None


class JobAccepted(Frame):
    type: Literal["job_accepted"] = "job_accepted"
    request_id: Id
    job_id: Id
    node_id: Id


class JobRejected(Frame):
    type: Literal["job_rejected"] = "job_rejected"
    request_id: Id
    code: RejectCode
    message: str


class SessionJobProgress(Frame):
    """S→C ``job_progress``."""

    type: Literal["job_progress"] = "job_progress"
    job_id: Id
    request_id: Id
    progress: Fraction
    data: JsonObject | None = None


class SessionJobResult(Frame):
    """S→C ``job_result``: final, exactly once per job to each session that submitted it."""

    type: Literal["job_result"] = "job_result"
    job_id: Id
    request_id: Id
    ok: bool
    result: JsonObject | None = None
    error: JobError | None = None


class SessionJobCancel(Frame):
    """C→S ``job_cancel``."""

    type: Literal["job_cancel"] = "job_cancel"
    job_id: Id
