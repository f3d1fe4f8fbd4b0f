"""Client sessions: who owns the socket, resume within SESSION_RESUME_TTL, the result outbox.

A session is six keys in its own slot (``keys.session_keys``): a record (tenant, created_ms,
closed_ms), the owner key (the channel of the consumer holding its socket), the outbox of final
results waiting to be sent, the tombstones of results already taken, and the results owed to
it (expected, with their request ids). All of them live ``resume_ttl_ms`` past the last renewal
or close, so a session that disconnects can be resumed on any instance within that time and
receive what finished while it was away. A result goes through the outbox even when the
session is connected: ``put`` stores it once, ``take`` hands it to exactly one socket and
leaves a tombstone, keeping a copy for that taker alone for ``HANDED_KEEP_MS`` in case the
answer was lost; ``sweep`` looks at the outbox and the due expectations, a bounded number
at a time; no call reads a whole outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.client import get_client
from hotstate.codes import Code
from hotstate.scripts import SCRIPTS, bounded


async def session_start(
    *,
    session_id: str,
    tenant: str,
    channel: str,
    resume_ttl_ms: int,
    client: RedisCluster | None = None,
) -> bool:
    """Create the session owned by ``channel``; False if the id already exists (draw another)."""
    reply = await SCRIPTS.call(
        "session_start",
        keys=[keys.session_record(session_id), keys.session_owner(session_id)],
        args=[tenant, channel, resume_ttl_ms],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.OPENED


@dataclass(frozen=True, slots=True)
class Resumed:
    """``resumed``: the session is now ``channel``'s; ``previous_channel``: socket to close."""

    resumed: bool
    previous_channel: str | None


async def session_resume(
    *,
    session_id: str,
    tenant: str,
    channel: str,
    resume_ttl_ms: int,
    client: RedisCluster | None = None,
) -> Resumed:
    """Reopen a live or recently closed session of ``tenant``; unknown or foreign: not resumed."""
    reply = await SCRIPTS.call(
        "session_resume",
        keys=keys.session_keys(session_id),
        args=[tenant, channel, resume_ttl_ms],
        client=client,
        subject=session_id,
    )
    previous = reply.text(0)
    return Resumed(
        resumed=reply.code is Code.RESUMED,
        previous_channel=previous if previous and previous != channel else None,
    )


async def session_close(
    *, session_id: str, channel: str, resume_ttl_ms: int, client: RedisCluster | None = None
) -> bool:
    """``channel``'s socket closed: keep the session resumable; False if it was not the owner."""
    reply = await SCRIPTS.call(
        "session_close",
        keys=keys.session_keys(session_id),
        args=[channel, resume_ttl_ms],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.CLOSED


async def session_renew(
    *, session_id: str, channel: str, resume_ttl_ms: int, client: RedisCluster | None = None
) -> bool:
    """Extend the session while ``channel`` owns it; False: another socket took it over."""
    reply = await SCRIPTS.call(
        "session_renew",
        keys=keys.session_keys(session_id),
        args=[channel, resume_ttl_ms],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.RENEWED


async def session_owner_get(*, session_id: str, client: RedisCluster | None = None) -> str | None:
    """The channel holding the session's socket now, or None (closed or expired)."""
    cluster = client or get_client()
    owner = keys.session_owner(session_id)
    value = await bounded("session_owner_get", cluster, cluster.get(owner), key=owner)
    return str(value) if value else None


# Tombstones: a session keeps at most this many, the newest (see ``tombstone_keep_ms``).
TOMBSTONES_MAX = 20_000


def tombstone_keep_ms() -> int:
    """How long the tombstone of a taken result lasts at least: the longer of SESSION_RESUME_TTL
    and the longest life of a job record (MAX_JOB_TIMEOUT_MS + REQUEST_LEASE_GRACE_MS).

    A result is put again only by someone who still has the job: the job's own follow-ups,
    redone while its record says they are owed; a repeated submit of its request id, while the
    request is bound; the session's sweep, only for a job still expected, and an expectation is
    never recorded for a result already taken. Record and binding live at most the request
    lease from the job's creation, which is before its result could be taken, so a tombstone
    kept this long outlives every repeat: exactly once holds. Past ``TOMBSTONES_MAX`` results
    taken within this time (over 20 a second for 15 minutes by default) the oldest tombstones go
    first, and only then could a late repeat of one of those reach the session again.
    """
    lease_ms = int(settings.MAX_JOB_TIMEOUT_MS) + int(settings.REQUEST_LEASE_GRACE_MS)
    return max(int(settings.SESSION_RESUME_TTL * 1000), lease_ms)


async def session_result_put(
    *, session_id: str, job_id: str, frame_json: str, client: RedisCluster | None = None
) -> bool:
    """Store a final result for the session, once (not again after it was taken); True if
    stored now. Either way the job is no longer expected."""
    reply = await SCRIPTS.call(
        "session_result_put",
        keys=_result_keys(session_id),
        args=[job_id, frame_json],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.STORED


async def session_result_forgo(
    *, session_id: str, job_id: str, client: RedisCluster | None = None
) -> None:
    """Make sure the session never gets the job's result (its submit was answered
    ``job_rejected`` though Redis may have created the job): a tombstone refuses every later
    put, and a waiting result or an expectation is dropped."""
    await SCRIPTS.call(
        "session_result_forgo",
        keys=_result_keys(session_id),
        args=[job_id],
        client=client,
        subject=session_id,
    )


def _result_keys(session_id: str) -> list[str]:
    return [
        keys.session_record(session_id),
        keys.session_outbox(session_id),
        keys.session_taken(session_id),
        keys.session_expected(session_id),
        keys.session_expected_requests(session_id),
    ]


async def session_result_expect(
    *,
    session_id: str,
    job_id: str,
    request_id: str,
    check_after_ms: int,
    client: RedisCluster | None = None,
) -> bool:
    """Record that the job's result is owed to the session, first checked ``check_after_ms``
    from now; False if its result is stored or taken already, or the session is gone."""
    reply = await SCRIPTS.call(
        "session_result_expect",
        keys=_result_keys(session_id),
        args=[job_id, request_id, check_after_ms],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.STORED


# Hand-over copies: a taker can take its frame again for this long (see session_result_take).
HANDED_KEEP_MS = 60_000
HANDED_MAX = 10_000


async def session_result_take(
    *,
    session_id: str,
    job_id: str,
    token: str,
    keep_ms: int | None = None,
    max_taken: int = TOMBSTONES_MAX,
    handed_ms: int = HANDED_KEEP_MS,
    max_handed: int = HANDED_MAX,
    client: RedisCluster | None = None,
) -> str | None:
    """Take a waiting result frame; exactly one token gets it, the others None.

    ``token`` names this take, never another one: repeating the call with the same token
    within ``handed_ms`` returns the same frame again, so a take that timed out (and may have
    run on the server) is recovered by repeating it. Its tombstone lasts ``keep_ms`` (default
    ``tombstone_keep_ms()``), among at most ``max_taken``; the copy kept for the repeat lasts
    ``handed_ms``, among at most ``max_handed``.
    """
    if "\n" in token or not token:
        raise ValueError(f"a take token is a non-empty line, got {token!r}")
    reply = await SCRIPTS.call(
        "session_result_take",
        keys=[
            keys.session_record(session_id),
            keys.session_outbox(session_id),
            keys.session_taken(session_id),
            keys.session_handed(session_id),
            keys.session_handed_at(session_id),
        ],
        args=[
            job_id,
            token,
            tombstone_keep_ms() if keep_ms is None else keep_ms,
            max_taken,
            handed_ms,
            max_handed,
        ],
        client=client,
        subject=session_id,
    )
    return reply.text(0) if reply.code is Code.TAKEN else None


async def session_result_return(
    *, session_id: str, job_id: str, frame_json: str, client: RedisCluster | None = None
) -> bool:
    """Put back a frame taken but not sent (its socket closed meanwhile); False if the
    session is gone."""
    reply = await SCRIPTS.call(
        "session_result_return",
        keys=[
            keys.session_record(session_id),
            keys.session_outbox(session_id),
            keys.session_taken(session_id),
        ],
        args=[job_id, frame_json],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.STORED


@dataclass(frozen=True, slots=True)
class Sweep:
    """``pending``: job ids whose results wait in the outbox (some of them); ``due``:
    (job_id, request_id) of expected results to check now."""

    pending: tuple[str, ...]
    due: tuple[tuple[str, str], ...]


async def session_outbox_sweep(
    *,
    session_id: str,
    pending_limit: int,
    due_limit: int,
    recheck_ms: int,
    client: RedisCluster | None = None,
) -> Sweep:
    """One bounded look: up to ``pending_limit`` waiting results and ``due_limit`` due
    expectations (each next due ``recheck_ms`` later)."""
    reply = await SCRIPTS.call(
        "session_outbox_sweep",
        keys=[
            keys.session_outbox(session_id),
            keys.session_expected(session_id),
            keys.session_expected_requests(session_id),
        ],
        args=[pending_limit, due_limit, recheck_ms],
        client=client,
        subject=session_id,
    )
    count = reply.number(0)
    values = [str(value) for value in reply.values[1:]]
    pending, rest = values[:count], values[count:]
    return Sweep(tuple(pending), tuple(zip(rest[::2], rest[1::2], strict=True)))


async def session_results_pending(
    *, session_id: str, limit: int = 100, client: RedisCluster | None = None
) -> list[str]:
    """Up to ``limit`` job ids whose results wait in the outbox (a sample when there are more;
    taking them makes room for the rest)."""
    cluster = client or get_client()
    outbox = keys.session_outbox(session_id)
    job_ids = await bounded(
        "session_results_pending", cluster, cluster.hrandfield(outbox, limit), key=outbox
    )
    return sorted(str(job_id) for job_id in job_ids or ())


async def session_results_taken(
    *, session_id: str, job_ids: Sequence[str], client: RedisCluster | None = None
) -> dict[str, str | None]:
    """Which of ``job_ids`` had their results taken (a tombstone), each with its frame as
    handed over if that copy is still kept (``HANDED_KEEP_MS``), else None."""
    if not job_ids:
        return {}
    cluster = client or get_client()
    taken_key = keys.session_taken(session_id)
    scores = await bounded(
        "session_results_taken", cluster, cluster.zmscore(taken_key, list(job_ids)), key=taken_key
    )
    taken = [job_id for job_id, score in zip(job_ids, scores, strict=True) if score is not None]
    if not taken:
        return {}
    handed_key = keys.session_handed(session_id)
    copies = await bounded(
        "session_results_taken", cluster, cluster.hmget(handed_key, taken), key=handed_key
    )
    # The client decodes responses: each copy is a str (token, newline, frame) or None.
    return {
        job_id: str(copy).partition("\n")[2] if copy else None
        for job_id, copy in zip(taken, copies, strict=True)
    }
