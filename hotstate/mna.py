"""MODEL_NOT_AVAILABLE: enqueue on the socket path, mark and debounce in the worker.

The three writes live in three slots (the stream shard, the node, the service), so they are
three single-slot scripts, run in this order:

1. ``mna_enqueue`` (socket handler; stream shard ``{q:K}``, K from the node id so one node's
   reports stay in order). Only an append: the socket path does no other work.
2. ``mna_mark`` (worker; node slot ``{n:ID}``): count the report against the node's rate limit
   (over it: dropped whole, counted); otherwise mark the node unavailable for the service
   until now + MNA_MARK_TTL. Selection and ``slot_reserve`` honour the mark from here on.
3. ``mna_debounce`` (worker; service slot ``{m:S@V}``): SET NX PX; the one winner per window
   runs the expensive action (catalog refresh, alert, ...).

Reading: each worker process runs :class:`MnaReader` turns. A turn reads new reports, and at most
once per ``MNA_CLAIM_EVERY_S`` takes over (``mna_claim``, XAUTOCLAIM) reports pending longer than
``MNA_CLAIM_IDLE_MS``: those of a reader that died before acknowledging, and those whose handling
failed. A report delivered more than ``MNA_MAX_DELIVERIES`` times is acknowledged and counted as a
dead letter (``mna_dead_letters`` reads the count). Reader names are numbered seats
(``mna_seat``), not process ids, so the group's consumer list stays small across restarts.

Why the order is safe: the mark comes first, so once a report is handled the node stops getting
that service even if the worker dies before the debounce; marking is idempotent (the later
expiry wins), so a redelivered event (not acknowledged before a crash) only re-marks; the
debounce is last, so a lost action costs at most one window, never a second action in the same
window. Failing over a job named in the report is not in here: it is ``job_transition`` on the
job's own slot, fenced by the report's attempt, and does not depend on any of these steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from hotstate import keys
from hotstate.client import get_client
from hotstate.codes import Code
from hotstate.nodes import service_mark
from hotstate.scripts import SCRIPTS, bounded

logger = logging.getLogger(__name__)

MNA_GROUP = "mna-workers"
MNA_STREAM_MAXLEN = 10_000
RATE_WINDOW_MS = 60_000
DROPPED_TTL_MS = 24 * 3600 * 1000
# A pending report idle this long is taken over: handling one takes a few Redis calls, each
# bounded by REDIS_SOCKET_TIMEOUT, so a live reader is never this slow.
MNA_CLAIM_IDLE_MS = 30_000
# How often a reader looks for reports to take over, and how many it takes per shard and look.
MNA_CLAIM_EVERY_S = 1.0
MNA_CLAIM_COUNT = 50
# Deliveries after which a report is given up (acknowledged and counted as a dead letter).
MNA_MAX_DELIVERIES = 5
MNA_SEATS = 64
MNA_SEAT_TTL_MS = 30_000


@dataclass(frozen=True, slots=True)
class MnaEvent:
    """One MODEL_NOT_AVAILABLE report as read from its stream shard."""

    shard: int
    entry_id: str
    node_id: str
    service_id: str
    service_version: str | None
    reason: str
    job_id: str | None
    attempt: int | None


async def mna_enqueue(
    *,
    node_id: str,
    service_id: str,
    service_version: str | None,
    reason: str,
    job_id: str | None = None,
    attempt: int | None = None,
    client: RedisCluster | None = None,
) -> str:
    """Append a report to the node's stream shard; return its entry id."""
    shard = keys.mna_stream_shard(node_id)
    fields = {
        "node_id": node_id,
        "service_id": service_id,
        "service_version": service_version or "",
        "reason": reason,
        "job_id": job_id or "",
        "attempt": "" if attempt is None else str(attempt),
    }
    reply = await SCRIPTS.call(
        "mna_enqueue",
        keys=[keys.mna_stream(shard)],
        args=[MNA_STREAM_MAXLEN, *(item for pair in fields.items() for item in pair)],
        client=client,
        subject=node_id,
    )
    return reply.text(0)


def _event(shard: int, entry_id: str, fields: dict[str, str]) -> MnaEvent:
    attempt = fields.get("attempt", "")
    return MnaEvent(
        shard=shard,
        entry_id=entry_id,
        node_id=fields["node_id"],
        service_id=fields["service_id"],
        service_version=fields.get("service_version") or None,
        reason=fields.get("reason", ""),
        job_id=fields.get("job_id") or None,
        attempt=int(attempt) if attempt else None,
    )


async def mna_read(
    *,
    consumer: str,
    group: str = MNA_GROUP,
    count: int = 100,
    block_ms: int | None = None,
    shards: Collection[int] | None = None,
    client: RedisCluster | None = None,
) -> list[MnaEvent]:
    """Read new reports for ``consumer`` in ``group`` from every shard (or ``shards``).

    The shards are read in parallel; groups are created on first use. ``block_ms`` waits for
    reports on each shard; keep it well below REDIS_SOCKET_TIMEOUT, which bounds every read.
    """
    if block_ms is not None and block_ms >= settings.REDIS_SOCKET_TIMEOUT * 500:
        raise ValueError(f"block_ms={block_ms} must be under half of REDIS_SOCKET_TIMEOUT")
    cluster = client or get_client()
    chosen = range(keys.MNA_STREAM_SHARDS) if shards is None else shards
    batches = await asyncio.gather(
        *(_read_shard(cluster, shard, consumer, group, count, block_ms) for shard in chosen)
    )
    return [event for batch in batches for event in batch]


async def _read_shard(
    cluster: RedisCluster, shard: int, consumer: str, group: str, count: int, block_ms: int | None
) -> list[MnaEvent]:
    stream = keys.mna_stream(shard)
    reply: Any = []
    for _ in range(2):
        try:
            reply = await bounded(
                "mna_read",
                cluster,
                cluster.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms),
                key=stream,
            )
            break
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await mna_group_create(shard=shard, group=group, client=cluster)
    return [
        _event(shard, entry_id, fields)
        for _, entries in reply or []
        for entry_id, fields in entries
    ]


async def mna_group_create(
    *, shard: int, group: str = MNA_GROUP, client: RedisCluster | None = None
) -> None:
    """Create the consumer group of a shard (and the stream) if it does not exist."""
    cluster = client or get_client()
    try:
        await bounded(
            "mna_group_create",
            cluster,
            cluster.xgroup_create(keys.mna_stream(shard), group, id="0", mkstream=True),
        )
    except ResponseError as exc:
        # Another worker created it first.
        if "BUSYGROUP" not in str(exc):
            raise


async def mna_ack(
    *, events: list[MnaEvent], group: str = MNA_GROUP, client: RedisCluster | None = None
) -> int:
    """Acknowledge handled reports; return how many were pending."""
    cluster = client or get_client()
    acked = 0
    by_shard: dict[int, list[str]] = {}
    for event in events:
        by_shard.setdefault(event.shard, []).append(event.entry_id)
    for shard, entry_ids in by_shard.items():
        acked += await bounded(
            "mna_ack",
            cluster,
            cluster.xack(keys.mna_stream(shard), group, *entry_ids),
            key=keys.mna_stream(shard),
        )
    return acked


@dataclass(frozen=True, slots=True)
class MnaMark:
    """``marked``: unavailable until ``expiry_ms``; otherwise dropped (``dropped`` so far)."""

    marked: bool
    expiry_ms: int | None
    dropped: int


async def mna_mark(
    *,
    node_id: str,
    service_id: str,
    service_version: str | None,
    mark_ttl_ms: int | None = None,
    rate_limit: int | None = None,
    rate_window_ms: int = RATE_WINDOW_MS,
    client: RedisCluster | None = None,
) -> MnaMark:
    """Step 2: count the report against the node's rate limit and mark the node unavailable.

    The mark covers ``service_id`` at ``service_version`` only, or every version when None.
    """
    reply = await SCRIPTS.call(
        "mna_mark",
        keys=[
            keys.node_unavailable(node_id),
            keys.node_mna_rate(node_id),
            keys.node_mna_dropped(node_id),
        ],
        args=[
            service_mark(service_id, service_version),
            mark_ttl_ms or int(settings.MNA_MARK_TTL * 1000),
            settings.MNA_NODE_RATE_LIMIT if rate_limit is None else rate_limit,
            rate_window_ms,
            DROPPED_TTL_MS,
        ],
        client=client,
        subject=node_id,
    )
    if reply.code is Code.MARKED:
        return MnaMark(marked=True, expiry_ms=reply.number(0), dropped=0)
    return MnaMark(marked=False, expiry_ms=None, dropped=reply.number(0))


async def mna_debounce(
    *,
    service_id: str,
    service_version: str | None,
    token: str,
    window_ms: int | None = None,
    client: RedisCluster | None = None,
) -> bool:
    """Step 3: True for exactly one report per (service, version) and window."""
    reply = await SCRIPTS.call(
        "mna_debounce",
        keys=[keys.mna_debounce(service_id, service_version)],
        args=[window_ms or int(settings.MNA_DEBOUNCE_WINDOW * 1000), token],
        client=client,
        subject=service_id,
    )
    return reply.code is Code.WON


@dataclass(frozen=True, slots=True)
class MnaDecision:
    """What the worker does with a report: ``run_action`` for the debounce winner only."""

    marked: bool
    dropped: bool
    run_action: bool


async def mna_handle(*, event: MnaEvent, client: RedisCluster | None = None) -> MnaDecision:
    """Steps 2 and 3 for one report, in the safe order; a dropped report stops at step 2."""
    mark = await mna_mark(
        node_id=event.node_id,
        service_id=event.service_id,
        service_version=event.service_version,
        client=client,
    )
    if not mark.marked:
        return MnaDecision(marked=False, dropped=True, run_action=False)
    won = await mna_debounce(
        service_id=event.service_id,
        service_version=event.service_version,
        token=f"{event.node_id}/{event.entry_id}",
        client=client,
    )
    return MnaDecision(marked=True, dropped=False, run_action=won)


@dataclass(frozen=True, slots=True)
class MnaClaim:
    """One ``mna_claim`` call: reports taken over, dead letters, where the scan goes on."""

    events: list[MnaEvent]
    dead: list[str]
    trimmed: int
    cursor: str


async def mna_claim(
    *,
    shard: int,
    consumer: str,
    group: str = MNA_GROUP,
    min_idle_ms: int = MNA_CLAIM_IDLE_MS,
    cursor: str = "0-0",
    count: int = MNA_CLAIM_COUNT,
    max_deliveries: int = MNA_MAX_DELIVERIES,
    client: RedisCluster | None = None,
) -> MnaClaim:
    """Take over the reports of ``shard`` pending longer than ``min_idle_ms`` (at most ``count``,
    scanning from ``cursor``); those delivered more than ``max_deliveries`` times are
    acknowledged and counted as dead letters instead."""
    try:
        reply = await SCRIPTS.call(
            "mna_claim",
            keys=[keys.mna_stream(shard), keys.mna_dead_letters(shard)],
            args=[group, consumer, min_idle_ms, cursor, count, max_deliveries],
            client=client,
            subject=f"shard {shard}",
        )
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        # No group yet: nothing was ever read, so nothing is pending.
        await mna_group_create(shard=shard, group=group, client=client)
        return MnaClaim(events=[], dead=[], trimmed=0, cursor="0-0")
    next_cursor, dead, trimmed, entries = reply.values
    return MnaClaim(
        events=[_event(shard, entry_id, _pairs(fields)) for entry_id, fields in entries],
        dead=[str(entry_id) for entry_id in dead],
        trimmed=int(trimmed),
        cursor=str(next_cursor),
    )


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


async def mna_dead_letters(*, client: RedisCluster | None = None) -> int:
    """How many reports were given up after ``MNA_MAX_DELIVERIES`` deliveries, all shards
    together (for an operator page; the counters never expire)."""
    cluster = client or get_client()
    counts = await asyncio.gather(
        *(
            bounded("mna_dead_letters", cluster, cluster.get(keys.mna_dead_letters(shard)))
            for shard in range(keys.MNA_STREAM_SHARDS)
        )
    )
    return sum(int(count or 0) for count in counts)


async def mna_seat(
    *,
    holder: str,
    group: str = MNA_GROUP,
    ttl_ms: int = MNA_SEAT_TTL_MS,
    seats: int = MNA_SEATS,
    client: RedisCluster | None = None,
) -> int | None:
    """Take or keep ``holder``'s reader seat in ``group``; None when every seat is held."""
    reply = await SCRIPTS.call(
        "mna_seat",
        keys=[keys.mna_seats(group)],
        args=[holder, ttl_ms, seats],
        client=client,
        subject=holder,
    )
    return reply.number(0) if reply.code is Code.ACQUIRED else None


def seat_consumer(seat: int) -> str:
    """The consumer name of a seat."""
    return f"seat-{seat}"


@dataclass(frozen=True, slots=True)
class MnaTurn:
    """What one reader turn did: reports read new, taken over, handled, given up."""

    read: int
    claimed: int
    handled: int
    dead: int


Handler = Callable[[MnaEvent], Awaitable[object]]


@dataclass
class MnaReader:
    """One process's reader of an MNA group: its seat, its claim cursors and pace.

    ``turn`` reads new reports, takes over stale ones when a claim is due, hands each to
    ``handle`` and acknowledges the ones it handled. A report whose handling raised stays
    pending, so it comes back (to any reader) after ``claim_idle_ms``, until it is given up.
    """

    holder: str
    group: str = MNA_GROUP
    claim_idle_ms: int = MNA_CLAIM_IDLE_MS
    claim_every_s: float = MNA_CLAIM_EVERY_S
    claim_count: int = MNA_CLAIM_COUNT
    max_deliveries: int = MNA_MAX_DELIVERIES
    seat_ttl_ms: int = MNA_SEAT_TTL_MS
    consumer: str | None = None
    _seat_until: float = 0.0
    _claim_at: float = 0.0
    _cursors: dict[int, str] = field(default_factory=dict)

    async def turn(
        self,
        handle: Handler,
        *,
        count: int = 100,
        block_ms: int | None = 100,
        client: RedisCluster | None = None,
    ) -> MnaTurn:
        cluster = client or get_client()
        consumer = await self.seat(cluster)
        events = await mna_read(
            consumer=consumer, group=self.group, count=count, block_ms=block_ms, client=cluster
        )
        read = len(events)
        claim = await self._claim_due(consumer, cluster)
        events += claim.events
        handled = []
        for event in events:
            try:
                await handle(event)
            except Exception:
                logger.exception("MODEL_NOT_AVAILABLE report %s failed", event.entry_id)
            else:
                handled.append(event)
        if handled:
            await mna_ack(events=handled, group=self.group, client=cluster)
        return MnaTurn(
            read=read, claimed=len(claim.events), handled=len(handled), dead=len(claim.dead)
        )

    async def seat(self, client: RedisCluster) -> str:
        """This reader's consumer name: its seat's, renewed at a third of its TTL."""
        now = time.monotonic()
        if self.consumer is not None and now < self._seat_until:
            return self.consumer
        seat = await mna_seat(
            holder=self.holder, group=self.group, ttl_ms=self.seat_ttl_ms, client=client
        )
        if seat is None:
            logger.warning("every MNA reader seat is taken; reading as %s", self.holder)
        consumer = self.holder if seat is None else seat_consumer(seat)
        if consumer != self.consumer and self.consumer is not None:
            logger.info("MNA reader %s now reads as %s", self.consumer, consumer)
        self.consumer = consumer
        self._seat_until = now + self.seat_ttl_ms / 3000
        return consumer

    async def _claim_due(self, consumer: str, client: RedisCluster) -> MnaClaim:
        """Every shard's stale reports, if a claim is due (at most ``claim_count`` per shard)."""
        now = time.monotonic()
        if now < self._claim_at:
            return MnaClaim(events=[], dead=[], trimmed=0, cursor="")
        self._claim_at = now + self.claim_every_s
        claims = await asyncio.gather(
            *(
                mna_claim(
                    shard=shard,
                    consumer=consumer,
                    group=self.group,
                    min_idle_ms=self.claim_idle_ms,
                    cursor=self._cursors.get(shard, "0-0"),
                    count=self.claim_count,
                    max_deliveries=self.max_deliveries,
                    client=client,
                )
                for shard in range(keys.MNA_STREAM_SHARDS)
            )
        )
        for shard, claim in enumerate(claims):
            self._cursors[shard] = claim.cursor
            if claim.dead:
                logger.error(
                    "MODEL_NOT_AVAILABLE reports %s given up after %s deliveries",
                    claim.dead,
                    self.max_deliveries,
                )
            if claim.trimmed:
                logger.warning("%s pending MNA reports were trimmed unhandled", claim.trimmed)
        return MnaClaim(
            events=[event for claim in claims for event in claim.events],
            dead=[entry_id for claim in claims for entry_id in claim.dead],
            trimmed=sum(claim.trimmed for claim in claims),
            cursor="",
        )
