"""Script return codes, and the one place where they become results or exceptions.

Every script replies ``{CODE, value...}``. Codes a caller routinely handles (a full node, a
debounced report, a duplicate terminal report) come back as results. The four refusals of the
job scripts are exceptions, because they end the caller's request with a protocol error:

==================  =====================  ================================
code                exception              PROTOCOL.md error code
==================  =====================  ================================
``NOT_FOUND``       :class:`JobNotFound`   ``JOB_NOT_FOUND``
``STALE_ATTEMPT``   :class:`StaleAttempt`  ``STALE_ATTEMPT``
``FORBIDDEN``       :class:`Forbidden`     ``FORBIDDEN``
``BAD_STATE``       :class:`BadState`      none: the caller decides
==================  =====================  ================================

A refusal changed nothing. Each carries the job's current ``state``, ``attempt`` and
``node_id`` as the script saw them (the job scripts reply ``{CODE, state, attempt, node_id}``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Code(StrEnum):
    """Every code any script returns; each script's header lists the ones it can return."""

    # request binding
    CLAIMED = "CLAIMED"
    EXISTING = "EXISTING"
    RELEASED = "RELEASED"
    NOT_BOUND = "NOT_BOUND"
    # job record
    CREATED = "CREATED"
    EXISTS = "EXISTS"
    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"
    SUBSCRIBED = "SUBSCRIBED"
    SETTLED = "SETTLED"
    NOT_FOUND = "NOT_FOUND"
    STALE_ATTEMPT = "STALE_ATTEMPT"
    FORBIDDEN = "FORBIDDEN"
    BAD_STATE = "BAD_STATE"
    # node presence and capabilities
    ENLISTED = "ENLISTED"
    PRUNED = "PRUNED"
    CAPS_WRITTEN = "CAPS_WRITTEN"
    CAPS_UNCHANGED = "CAPS_UNCHANGED"
    OK = "OK"
    REMOVED = "REMOVED"
    UPDATED = "UPDATED"
    NOT_PRESENT = "NOT_PRESENT"
    NOT_OWNER = "NOT_OWNER"
    # slots
    RESERVED = "RESERVED"
    HELD = "HELD"
    DRAINED = "DRAINED"
    NOT_SERVED = "NOT_SERVED"
    UNAVAILABLE = "UNAVAILABLE"
    FULL = "FULL"
    NOT_HELD = "NOT_HELD"
    RENEWED = "RENEWED"
    # MODEL_NOT_AVAILABLE
    QUEUED = "QUEUED"
    MARKED = "MARKED"
    DROPPED = "DROPPED"
    WON = "WON"
    DEBOUNCED = "DEBOUNCED"
    # instances, leaders
    REGISTERED = "REGISTERED"
    ACQUIRED = "ACQUIRED"
    BUSY = "BUSY"
    # job timers
    ARMED = "ARMED"
    DISARMED = "DISARMED"
    # sessions
    OPENED = "OPENED"
    RESUMED = "RESUMED"
    UNKNOWN = "UNKNOWN"
    CLOSED = "CLOSED"
    STORED = "STORED"
    GONE = "GONE"
    TAKEN = "TAKEN"
    EMPTY = "EMPTY"


class ScriptReplyError(Exception):
    """A script answered with a code its header does not declare: a bug, never an outage."""


class Refused(Exception):
    """A job script refused the call and changed nothing."""

    code: Code
    protocol_code: str | None = None

    def __init__(self, script: str, subject: str, state: str, attempt: int, node_id: str) -> None:
        self.script = script
        self.subject = subject
        self.state = state
        self.attempt = attempt
        self.node_id = node_id
        super().__init__(
            f"{script} {subject}: {self.code} (state {state or '-'}, attempt {attempt}, "
            f"node {node_id or '-'})"
        )


class JobNotFound(Refused):
    """No such job, or it belongs to another tenant."""

    code = Code.NOT_FOUND
    protocol_code = "JOB_NOT_FOUND"


class StaleAttempt(Refused):
    """The caller acts on an attempt that is not the job's current one."""

    code = Code.STALE_ATTEMPT
    protocol_code = "STALE_ATTEMPT"


class Forbidden(Refused):
    """The job is not the caller's: another node is assigned, or another tenant owns it."""

    code = Code.FORBIDDEN
    protocol_code = "FORBIDDEN"


class BadState(Refused):
    """The job's state does not allow the transition (terminal states are final)."""

    code = Code.BAD_STATE


_CODES = {code.value: code for code in Code}
REFUSALS: dict[Code, type[Refused]] = {
    cls.code: cls for cls in (JobNotFound, StaleAttempt, Forbidden, BadState)
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A script's answer that is not a refusal: its code and the values after it."""

    code: Code
    values: tuple[Any, ...]

    def text(self, index: int) -> str:
        value = self.values[index]
        return value if isinstance(value, str) else str(value)

    def number(self, index: int) -> int:
        return int(self.values[index])


def decode(raw: Any, *, script: str, declared: Collection[str], subject: str) -> Reply:
    """Turn a raw reply of ``script`` into a :class:`Reply`, or raise its refusal.

    ``declared``: the codes the script's header lists; any other reply is a bug.
    """
    if not isinstance(raw, list) or not raw or raw[0] not in declared:
        raise ScriptReplyError(f"{script} returned {raw!r}, not a declared code")
    code = _CODES[raw[0]]
    refusal = REFUSALS.get(code)
    if refusal is not None:
        state, attempt, node_id = raw[1], raw[2], raw[3]
        raise refusal(script, subject, str(state), int(attempt), str(node_id))
    return Reply(code, tuple(raw[1:]))
