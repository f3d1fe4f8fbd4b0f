"""A node's slots: the reservations that bound how many jobs it runs at once.

The slots are a sorted set of job id -> expiry (the node primary's clock) in the node's hash
slot; ``slot_reserve`` is the authority on capacity (DESIGN.md, step 3), and a reservation that
outlives a crash expires by itself after RESERVATION_TTL unless the node's heartbeats renew it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.codes import Code
from hotstate.nodes import reservation_ttl_ms, service_field, service_mark
from hotstate.scripts import SCRIPTS


class ReserveOutcome(StrEnum):
    RESERVED = "RESERVED"
    HELD = "HELD"  # the job already held a slot here (a repeat): still reserved
    NOT_PRESENT = "NOT_PRESENT"
    DRAINED = "DRAINED"
    NOT_SERVED = "NOT_SERVED"
    UNAVAILABLE = "UNAVAILABLE"
    FULL = "FULL"


@dataclass(frozen=True, slots=True)
class Reservation:
    """``ok``: the job holds a slot on the node; ``live``: the node's live reservations."""

    outcome: ReserveOutcome
    live: int

    @property
    def ok(self) -> bool:
        return self.outcome in (ReserveOutcome.RESERVED, ReserveOutcome.HELD)


async def slot_reserve(
    *,
    node_id: str,
    job_id: str,
    attempt: int,
    service_id: str | None,
    service_version: str | None = None,
    ttl_ms: int | None = None,
    client: RedisCluster | None = None,
) -> Reservation:
    """Reserve one slot on the node for ``job_id``'s ``attempt`` (idempotent by job id: a newer
    attempt takes over the slot an older one still holds).

    Refused unless the node is present, not drained, offers ``service_id`` (checked when given)
    and is not marked unavailable for it (``id`` or ``id@version``), and its live reservations
    are below ``max_jobs``. The slot frees itself after ``ttl_ms`` (default RESERVATION_TTL)
    unless the node's heartbeats renew it.
    """
    mark_version = service_mark(service_id, service_version) if service_id else ""
    reply = await SCRIPTS.call(
        "slot_reserve",
        keys=keys.node_slot_keys(node_id),
        args=[
            job_id,
            ttl_ms or reservation_ttl_ms(),
            service_field(service_id) if service_id else "",
            service_id or "",
            mark_version if service_version is not None else "",
            attempt,
        ],
        client=client,
        subject=node_id,
        # On a replica before the job is sent: a failover that lost the reservation would let
        # the node's slot be taken twice while the job runs.
        durable=True,
    )
    return Reservation(ReserveOutcome(reply.code), reply.number(0))


@dataclass(frozen=True, slots=True)
class SlotRelease:
    """``released``: this call freed the job's slot; ``live``: the node's live reservations."""

    released: bool
    live: int


async def slot_release(
    *, node_id: str, job_id: str, attempt: int, client: RedisCluster | None = None
) -> SlotRelease:
    """Free ``job_id``'s slot on the node if ``attempt`` (or an older one) holds it; repeating
    it frees nothing more."""
    reply = await SCRIPTS.call(
        "slot_release",
        keys=[keys.node_reservations(node_id), keys.node_holders(node_id)],
        args=[job_id, attempt],
        client=client,
        subject=node_id,
    )
    return SlotRelease(reply.code is Code.RELEASED, reply.number(0))
