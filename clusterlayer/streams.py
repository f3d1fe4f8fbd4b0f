"""Reading a stream through the layer's consumer group: the loop shared by the inbox reader
and the normal-channel fetchers.

Owns the consumer group's name, the read loop and its recovery after errors, the ids handed
over but not yet acknowledged (per stream, kept from one reader of a stream to the next), the
acknowledgement (XACK + XDEL), the recreation of a stream whose group was lost, and the claim
of entries that dead consumers of a shared stream left pending (XAUTOCLAIM, with a dead-letter
count). It skips expired entries and entries already handed over; what becomes of the others is
the caller's ``deliver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError, SlotNotCoveredError

from clusterlayer.cancel import raise_if_cancelled
from clusterlayer.errors import RETRY_MAX, RETRY_MIN, UNAVAILABLE_ERRORS
from clusterlayer.scripts import claim_pending

logger = logging.getLogger(__name__)

# The consumer group on every stream; the consumer name is the reading process's (``Process``).
GROUP = "clusterlayer"
# How long a channel's dead-letter count lives after its last increase.
DEAD_LETTER_TTL_MS = 86_400_000

Entry = tuple[bytes, dict[bytes, bytes]]
# An entry to deliver: the time its message expires, and its fields.
Fresh = tuple[float, dict[bytes, bytes]]
Deliver = Callable[[list[Fresh]], None]


def entries(response: Any) -> list[Entry]:
    """The entries of a one-stream XREADGROUP reply, in either of redis-py's reply shapes."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(next(iter(response.values())))
    return list(response[0][1])


def _entry_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def _stream_lost(exc: ResponseError) -> bool:
    """The stream or its group is gone (flushed, expired): the reader recreates the group."""
    text = str(exc)
    return text.startswith("NOGROUP") or "no longer exists" in text


@dataclass(frozen=True)
class ClaimPolicy:
    """When the entries another consumer left pending are taken over, and when given up."""

    idle_ms: int  # pending this long: its consumer counts as dead
    max_deliveries: int  # delivered more often than this: dropped and counted as a dead letter


@dataclass
class ReadState:
    """Where one ``consume`` loop stands between two turns."""

    # The stream's dead-letter counter; None: nobody else reads the stream, nothing to claim.
    dead_letters: str | None = None
    recovering: bool = True  # read this consumer's pending entries before new ones
    backoff: float = RETRY_MIN
    done: list[bytes] = field(default_factory=list)  # handed over, not yet acknowledged
    claim_at: float = 0.0  # time.monotonic() of the next claim of others' pending entries


class StreamReader:
    """One process's consumer on every stream the process reads (its inbox, the normal
    channels it receives on)."""

    def __init__(
        self,
        client: RedisCluster,
        *,
        consumer: str,
        read_count: int,
        block_ms: int,
        expiry: float,
        claim: ClaimPolicy,
        closed: Callable[[], bool],
    ) -> None:
        self.client = client
        self.claim = claim
        self.consumer = consumer
        self.read_count = read_count
        self.block_ms = block_ms
        self.expiry = expiry
        self.closed = closed
        # Entries handed to a mailbox but not yet acknowledged, per stream key: a read of the
        # pending list after an error acknowledges these without delivering them again.
        self.unacked: defaultdict[str, set[bytes]] = defaultdict(set)

    async def consume(
        self,
        key: str,
        deliver: Deliver,
        wanted: Callable[[], bool],
        ttl_ms: int,
        *,
        dead_letters: str | None = None,
    ) -> None:
        """Read ``key`` and ``deliver`` its entries while ``wanted()`` and not closed.

        1. After a start or an error, first read this consumer's pending entries (ID 0): those
           handed over before the error are only acknowledged, the others are delivered.
        2. Then block for new entries (">"), up to ``read_count`` at a time.
        3. Hand the batch over (``hand_over``); XACK and XDEL it in the same pipeline as the next
           blocking read (same key, same node), so a trickle of single messages costs one round
           trip each.
        4. A lost stream (flushed, or expired while the heartbeat could not reach Redis) gets its
           group back, with ``ttl_ms`` if it must be created; an unreachable cluster is retried
           with backoff.
        5. A stream that other processes read too (``dead_letters`` given: a normal channel)
           is also claimed from, at the start and then every half ``claim.idle_ms``
           (``_claim``): what a dead consumer left pending is delivered here.
        6. Each turn first checks for a cancel that redis-py swallowed (``cancel``), so the loop
           ends on the first one; acknowledgements owed are paid on the way out.
        """
        state = ReadState(dead_letters=dead_letters)
        try:
            while wanted() and not self.closed():
                raise_if_cancelled()
                if not await self._turn(key, deliver, wanted, ttl_ms, state):
                    break
        finally:
            if state.done:
                # Stopped with acknowledgements owed: pay them now, or a claim would deliver
                # them again. If this fails they stay pending: this process's next reader of the
                # stream only acknowledges them (``unacked``); anyone else delivers them again.
                with contextlib.suppress(
                    *UNAVAILABLE_ERRORS, ResponseError, asyncio.CancelledError
                ):
                    await self._acknowledge(key, state.done)

    async def _turn(
        self,
        key: str,
        deliver: Deliver,
        wanted: Callable[[], bool],
        ttl_ms: int,
        state: ReadState,
    ) -> bool:
        """One read and hand-over, or one recovery from an error; False: stop reading."""
        try:
            read = await self._read(key, state)
            if state.recovering and not read:
                state.recovering = False
                return True
            state.done = self.hand_over(key, read, deliver)
            state.backoff = RETRY_MIN
        except ResponseError as exc:
            if not _stream_lost(exc):
                logger.exception("consumer %s: reading %s failed", self.consumer, key)
                await asyncio.sleep(RETRY_MAX)
                state.recovering = True
                return True
            state.done = []
            self.unacked.pop(key, None)
            if not wanted() or self.closed():
                return False  # nobody waits any more: do not bring a flushed stream back
            try:
                await self._create_group(key, ttl_ms)
            except UNAVAILABLE_ERRORS:
                await asyncio.sleep(state.backoff)
            state.recovering = False
        except UNAVAILABLE_ERRORS as exc:
            logger.warning(
                "consumer %s: reading %s failed (%s); retrying in %.2f s",
                self.consumer,
                key,
                exc,
                state.backoff,
            )
            await asyncio.sleep(state.backoff)
            state.backoff = min(state.backoff * 2, RETRY_MAX)
            state.recovering = True
        except Exception:
            # A reader that dies silently would stop all delivery to this process; an entry
            # that cannot be handed over is in ``unacked`` and is only acknowledged on the next
            # pass.
            logger.exception("consumer %s: handing over entries of %s failed", self.consumer, key)
            await asyncio.sleep(RETRY_MIN)
            state.recovering = True
        return True

    async def _read(self, key: str, state: ReadState) -> list[Entry]:
        """This consumer's pending entries when recovering, else a blocking read of new ones
        pipelined after the acknowledgement of the previous batch."""
        response: Any
        if state.recovering:
            if state.done:
                await self._acknowledge(key, state.done)
                state.done = []
            node = await self._node_of(key)
            response = await self.client.execute_command(
                *self._xreadgroup(key, "0", block_ms=None), target_nodes=node
            )
            return entries(response)
        if state.dead_letters is not None and time.monotonic() >= state.claim_at:
            return await self._claim(key, state.dead_letters, state)
        pipe = self.client.pipeline()
        if state.done:
            pipe.xack(key, GROUP, *state.done)
            pipe.xdel(key, *state.done)
        node = await self._node_of(key)
        pipe.execute_command(*self._xreadgroup(key, ">", block_ms=self.block_ms), target_nodes=node)
        *acks, response = await pipe.execute(raise_on_error=False)
        for result in (*acks, response):
            if isinstance(result, Exception):
                raise result
        self.unacked[key].difference_update(state.done)
        state.done = []
        return entries(response)

    def _xreadgroup(self, key: str, start: str, *, block_ms: int | None) -> list[Any]:
        """The XREADGROUP command of this consumer on ``key`` from ``start``."""
        command: list[Any] = ["XREADGROUP", "GROUP", GROUP, self.consumer]
        command += ["COUNT", self.read_count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        return [*command, "STREAMS", key, start]

    async def _node_of(self, key: str) -> ClusterNode:
        """The primary serving ``key``, from the client's slot map.

        XREADGROUP has "movable" keys, for which redis-py asks the server (COMMAND GETKEYS) on
        every call: one more round trip per read, and one more moment where a cancel can be
        lost. Naming the node skips that; after a failover, a MOVED reply updates the map.
        """
        await self.client.initialize()  # a no-op once the client has its slot map
        node = self.client.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no node serves {key!r}")
        return node

    async def _claim(self, key: str, dead_letters: str, state: ReadState) -> list[Entry]:
        """Take over the entries of ``key`` pending longer than ``claim.idle_ms`` for other
        consumers (they died between reading and acknowledging), to deliver them here.

        Entries delivered more than ``claim.max_deliveries`` times are dropped instead and
        counted in ``dead_letters``: a message that keeps killing its readers stops there.
        Consumers idle that long with nothing pending are forgotten by the group.
        """
        if state.done:
            await self._acknowledge(key, state.done)
            state.done = []
        state.claim_at = time.monotonic() + self.claim.idle_ms / 2000
        claimed = await claim_pending(
            self.client,
            stream=key,
            dead_letters=dead_letters,
            group=GROUP,
            consumer=self.consumer,
            min_idle_ms=self.claim.idle_ms,
            count=self.read_count,
            max_deliveries=self.claim.max_deliveries,
            ttl_ms=DEAD_LETTER_TTL_MS,
        )
        if claimed.dead:
            logger.warning(
                "consumer %s: dropped %d entries of %s delivered more than %d times",
                self.consumer,
                claimed.dead,
                key,
                self.claim.max_deliveries,
            )
        return claimed.entries

    def hand_over(self, key: str, read: list[Entry], deliver: Deliver) -> list[bytes]:
        """``deliver`` the entries of a read that are due, and return every id to acknowledge.

        Skipped: entries deleted while pending (no fields), entries handed over before an
        error, and entries older than the expiry (their id is the server's time of the XADD).
        """
        unacked = self.unacked[key]
        now = time.time()
        ids: list[bytes] = []
        fresh: list[Fresh] = []
        for entry_id, fields in read:
            ids.append(entry_id)
            if not fields or entry_id in unacked:
                continue
            unacked.add(entry_id)
            deadline = _entry_ms(entry_id) / 1000 + self.expiry
            if deadline > now:
                fresh.append((deadline, fields))
        deliver(fresh)
        return ids

    async def _acknowledge(self, key: str, ids: list[bytes]) -> None:
        pipe = self.client.pipeline()
        pipe.xack(key, GROUP, *ids)
        pipe.xdel(key, *ids)
        await pipe.execute()
        self.unacked[key].difference_update(ids)

    async def _create_group(self, key: str, ttl_ms: int) -> None:
        pipe = self.client.pipeline()
        pipe.xgroup_create(key, GROUP, id="0", mkstream=True)
        pipe.pexpire(key, ttl_ms, nx=True)
        created, _ = await pipe.execute(raise_on_error=False)
        if isinstance(created, ResponseError) and "BUSYGROUP" not in str(created):
            raise created
