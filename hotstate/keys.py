"""Every hot-state key, built here and nowhere else (Python or Lua).

A key is ``<prefix>:{<tag>}:<kind>``. The prefix is ``settings.HOTSTATE_PREFIX`` (versioned: a
schema change bumps it so old and new keys never mix). The hash tag decides the cluster slot, and
every key a script touches in one call carries the same tag:

=========  ==================================  =================================================
tag        keys                                why together
=========  ==================================  =================================================
``n:ID``   presence, caps, reservations,       the reserve and heartbeat scripts read and write
           unavailable marks, MNA rate and     all of them atomically
           drop counters
``j:ID``   job record, job subscribers         a terminal transition hands over the subscriber
                                               set in the same commit
``r:T:R``  request binding (tenant, request)   one key per idempotency key
``s:ID``   session socket owner
``i:ID``   instance presence
``l:DUTY`` leader lock of a periodic duty
``d:K``    node directory shard K              sharded: every instance reads it each second
``q:K``    MODEL_NOT_AVAILABLE stream shard K  sharded: every node's reports land here; the
           and its dead-letter counter;        claim script acks and counts in one commit
           ``q:seats``: MNA reader seats       (one small hash per consumer group)
``m:S@V``  MNA debounce of (service, version)
``t:K``    job timer shard K                   sharded: every instance claims due timers
``s:ID``   session record, result outbox,      resume and delivery change them together with
           tombstones, expected results,       the owner key
           hand-over copies of taken results
=========  ==================================  =================================================

Parts taken from the outside world (tenants, request ids, ids of any kind) are escaped, so that
no value can end a hash tag early or make two different (tenant, request) pairs build one key.
"""

from __future__ import annotations

import functools
import zlib

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

# Shard counts are part of the schema: changing one moves keys, so bump HOTSTATE_PREFIX with it.
NODE_DIRECTORY_SHARDS = 16
MNA_STREAM_SHARDS = 8
TIMER_SHARDS = 8

_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "@": "%40", "{": "%7B", "}": "%7D"})


def _part(value: str) -> str:
    """One id inside a key: non-empty, with ``% : @ { }`` percent-escaped (injective)."""
    if not value:
        raise ValueError("an id inside a hot-state key must not be empty")
    return value.translate(_ESCAPES)


_prefix: str | None = None


def prefix() -> str:
    """``settings.HOTSTATE_PREFIX``, checked once (every key is built on the hot path)."""
    global _prefix
    if _prefix is None:
        value: str = settings.HOTSTATE_PREFIX
        if not value or "{" in value or "}" in value:
            raise ImproperlyConfigured(
                f"HOTSTATE_PREFIX={value!r} must be non-empty and free of braces "
                f"(they mark hash tags)"
            )
        _prefix = value
    return _prefix


@receiver(setting_changed)
def _prefix_changed(*, setting: str, **kwargs: object) -> None:
    # override_settings (tests) changes the prefix at run time.
    global _prefix
    if setting == "HOTSTATE_PREFIX":
        _prefix = None


def _shard(value: str, shards: int) -> int:
    # crc32 is stable across processes and Python versions (unlike hash()).
    return zlib.crc32(value.encode()) % shards


# --- per node: {n:<node_id>} --------------------------------------------------------------------


def node_presence(node_id: str) -> str:
    """String, PX = 3 heartbeat intervals; value = channel of the consumer holding the socket."""
    return f"{prefix()}:{{n:{_part(node_id)}}}:presence"


def node_caps(node_id: str) -> str:
    """Hash of flat capability and load fields (see docs/hotstate.md)."""
    return f"{prefix()}:{{n:{_part(node_id)}}}:caps"


def node_reservations(node_id: str) -> str:
    """Sorted set: job_id -> expiry in epoch ms (the node's primary clock)."""
    return f"{prefix()}:{{n:{_part(node_id)}}}:reservations"


def node_holders(node_id: str) -> str:
    """Hash: job_id -> the attempt its reservation is for (a late release of an older attempt
    must not free a newer one's slot)."""
    return f"{prefix()}:{{n:{_part(node_id)}}}:holders"


def node_unavailable(node_id: str) -> str:
    """Sorted set: service mark (``id`` or ``id@version``) -> expiry in epoch ms."""
    return f"{prefix()}:{{n:{_part(node_id)}}}:unavailable"


def node_mna_rate(node_id: str) -> str:
    """Counter of MODEL_NOT_AVAILABLE reports in the current rate window (PX = the window)."""
    return f"{prefix()}:{{n:{_part(node_id)}}}:mna_rate"


def node_mna_dropped(node_id: str) -> str:
    """Counter of MODEL_NOT_AVAILABLE reports dropped by the rate limit."""
    return f"{prefix()}:{{n:{_part(node_id)}}}:mna_dropped"


def node_slot_keys(node_id: str) -> tuple[str, str, str, str, str]:
    """presence, caps, reservations, unavailable, holders: the keys of every slot_reserve
    call."""
    return _node_slot_keys(prefix(), node_id)


@functools.lru_cache(maxsize=65536)
def _node_slot_keys(current_prefix: str, node_id: str) -> tuple[str, str, str, str, str]:
    # Nodes are few and reserved on constantly; the prefix is part of the cache key.
    return (
        node_presence(node_id),
        node_caps(node_id),
        node_reservations(node_id),
        node_unavailable(node_id),
        node_holders(node_id),
    )


# --- node directory: {d:<shard>} ----------------------------------------------------------------


def node_directory_shard(node_id: str) -> int:
    return _shard(node_id, NODE_DIRECTORY_SHARDS)


def node_directory(shard: int) -> str:
    """Sorted set: node_id -> epoch ms of its last registration (shard's clock)."""
    if not 0 <= shard < NODE_DIRECTORY_SHARDS:
        raise ValueError(f"node directory shard {shard} is outside 0..{NODE_DIRECTORY_SHARDS - 1}")
    return f"{prefix()}:{{d:{shard}}}:nodes"


def node_directory_of(node_id: str) -> str:
    return node_directory(node_directory_shard(node_id))


def node_directories() -> list[str]:
    return [node_directory(shard) for shard in range(NODE_DIRECTORY_SHARDS)]


# --- per request: {r:<tenant>:<request_id>} -----------------------------------------------------


def request_binding(tenant: str, request_id: str) -> str:
    """String, PX = the lease; value = the job_id the request is bound to."""
    return f"{prefix()}:{{r:{_part(tenant)}:{_part(request_id)}}}:job"


# --- per job: {j:<job_id>} ----------------------------------------------------------------------


def job_record(job_id: str) -> str:
    """Hash: the job's fields (state, attempt, node_id, payload, result, ...)."""
    return f"{prefix()}:{{j:{_part(job_id)}}}:record"


def job_subscribers(job_id: str) -> str:
    """Set of session ids that submitted the job's request and await its result."""
    return f"{prefix()}:{{j:{_part(job_id)}}}:subscribers"


# --- per session, instance, duty ----------------------------------------------------------------


def session_owner(session_id: str) -> str:
    """String with TTL: channel name of the consumer that holds the session's socket."""
    return f"{prefix()}:{{s:{_part(session_id)}}}:owner"


def session_record(session_id: str) -> str:
    """Hash: tenant, created_ms, closed_ms; lives SESSION_RESUME_TTL past its last renewal."""
    return f"{prefix()}:{{s:{_part(session_id)}}}:record"


def session_outbox(session_id: str) -> str:
    """Hash: job_id -> job_result frame awaiting delivery (a frame leaves it when taken)."""
    return f"{prefix()}:{{s:{_part(session_id)}}}:outbox"


def session_taken(session_id: str) -> str:
    """Sorted set: job_id -> epoch ms it was taken (tombstones, pruned by age and count)."""
    return f"{prefix()}:{{s:{_part(session_id)}}}:taken"


def session_expected(session_id: str) -> str:
    """Sorted set: job_id -> epoch ms of the next check of a result owed to the session."""
    return f"{prefix()}:{{s:{_part(session_id)}}}:expected"


def session_expected_requests(session_id: str) -> str:
    """Hash: job_id -> request_id of each result owed (a JOB_LOST answer names the request)."""
    return f"{prefix()}:{{s:{_part(session_id)}}}:expected_requests"


def session_handed(session_id: str) -> str:
    """Hash: job_id -> taker's token, newline, frame: a frame as handed over by a take, kept
    for a short while so that the same taker can take it again after losing the answer."""
    return f"{prefix()}:{{s:{_part(session_id)}}}:handed"


def session_handed_at(session_id: str) -> str:
    """Sorted set: job_id -> epoch ms of its hand-over (which copies in ``handed`` are old)."""
    return f"{prefix()}:{{s:{_part(session_id)}}}:handed_at"


def session_keys(session_id: str) -> tuple[str, str, str, str, str, str]:
    """record, owner, outbox, taken, expected, expected_requests: every key of a session, in
    the order the session's open, renew, resume and close scripts take them. The hand-over
    copies (``session_handed``, ``session_handed_at``) are not among them: they expire on
    their own, a short while after the session's last take."""
    return (
        session_record(session_id),
        session_owner(session_id),
        session_outbox(session_id),
        session_taken(session_id),
        session_expected(session_id),
        session_expected_requests(session_id),
    )


def instance_presence(instance_id: str) -> str:
    """String with TTL: the instance is alive while it exists."""
    return f"{prefix()}:{{i:{_part(instance_id)}}}:presence"


def leader_lock(duty: str) -> str:
    """String with TTL: the token of the process that performs ``duty`` now."""
    return f"{prefix()}:{{l:{_part(duty)}}}:leader"


# --- MODEL_NOT_AVAILABLE: {q:<shard>}, {m:<service>@<version>} ----------------------------------


def mna_stream_shard(node_id: str) -> int:
    """Reports of one node always land in one shard, so they stay in order."""
    return _shard(node_id, MNA_STREAM_SHARDS)


def mna_stream(shard: int) -> str:
    """Stream of MODEL_NOT_AVAILABLE events, consumed by workers in a consumer group."""
    if not 0 <= shard < MNA_STREAM_SHARDS:
        raise ValueError(f"MNA stream shard {shard} is outside 0..{MNA_STREAM_SHARDS - 1}")
    return f"{prefix()}:{{q:{shard}}}:mna"


def mna_dead_letters(shard: int) -> str:
    """Counter (no TTL): reports of stream shard ``shard`` given up after too many deliveries."""
    return f"{mna_stream(shard)}_dead"


def mna_seats(group: str) -> str:
    """Hash: the numbered reader seats of an MNA consumer group (holder and expiry per seat)."""
    return f"{prefix()}:{{q:seats}}:{_part(group)}:seats"


def mna_debounce(service_id: str, version: str | None) -> str:
    """String, PX = the debounce window; exists while the expensive action is debounced."""
    service = _part(service_id) if version is None else f"{_part(service_id)}@{_part(version)}"
    return f"{prefix()}:{{m:{service}}}:debounce"


# --- job timers: {t:<shard>} --------------------------------------------------------------------


def timer_shard(job_id: str) -> int:
    return _shard(job_id, TIMER_SHARDS)


def timers(shard: int) -> str:
    """Sorted set: job_id -> due time, epoch ms (the arming caller's clock)."""
    if not 0 <= shard < TIMER_SHARDS:
        raise ValueError(f"timer shard {shard} is outside 0..{TIMER_SHARDS - 1}")
    return f"{prefix()}:{{t:{shard}}}:timers"


def timers_of(job_id: str) -> str:
    return timers(timer_shard(job_id))


def timer_shards() -> list[str]:
    return [timers(shard) for shard in range(TIMER_SHARDS)]
