"""Node presence, capabilities and load (a node's slots are in ``hotstate.slots``).

A node is online while its presence key exists (TTL = 3 heartbeat intervals). Its capabilities
are flat hash fields (``max_jobs``, ``node_version``, ``region``, ``svc:<id>`` = comma-joined
versions, ``feat:<name>`` = ``1``) plus ``drained``, the load fields and ``updated_ms``; a digest
of the capability fields lets an unchanged heartbeat skip rewriting them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings
from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.client import get_client
from hotstate.codes import Code
from hotstate.scripts import SCRIPTS, bounded

PRESENCE_MISSES = 3
SERVICE_FIELD = "svc:"
FEATURE_FIELD = "feat:"


def presence_ttl_ms() -> int:
    """DESIGN.md: a node silent for 3 heartbeat intervals is offline."""
    return PRESENCE_MISSES * settings.HEARTBEAT_INTERVAL_MS


def caps_ttl_ms() -> int:
    # Longer than the presence, so a present node always has its capabilities.
    return 2 * presence_ttl_ms()


def reservation_ttl_ms() -> int:
    """How long a reservation lives unless the node's heartbeats renew it (``hotstate.slots``)."""
    return int(settings.RESERVATION_TTL * 1000)


def service_field(service_id: str) -> str:
    """The caps hash field that lists a service's versions."""
    return f"{SERVICE_FIELD}{service_id}"


def service_mark(service_id: str, version: str | None) -> str:
    """An unavailable mark's member: ``id`` (every version) or ``id@version``."""
    return service_id if version is None else f"{service_id}@{version}"


def _check_name(kind: str, value: str, forbidden: str) -> None:
    if not value or any(char in value for char in forbidden):
        raise ValueError(f"{kind} {value!r} must be non-empty and free of {forbidden!r}")


@dataclass(frozen=True)
class NodeCaps:
    """What a node declares at register (and again when it changes).

    ``services`` maps a service id to its versions; an empty list means the node declared the
    service without a version.
    """

    max_jobs: int
    node_version: str
    services: Mapping[str, Sequence[str]]
    features: Collection[str] = ()
    region: str | None = None

    def __post_init__(self) -> None:
        if self.max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {self.max_jobs}")
        for service_id, versions in self.services.items():
            _check_name("service id", service_id, "@,")
            for version in versions:
                _check_name("service version", version, ",")

    def fields(self) -> dict[str, str]:
        """The flat hash fields, as stored."""
        flat = {
            "max_jobs": str(self.max_jobs),
            "node_version": self.node_version,
            "region": self.region or "",
        }
        for service_id, versions in self.services.items():
            flat[service_field(service_id)] = ",".join(sorted(set(versions)))
        for feature in self.features:
            flat[f"{FEATURE_FIELD}{feature}"] = "1"
        return flat

    def digest(self) -> str:
        canonical = json.dumps(sorted(self.fields().items()), separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()[:20]

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> NodeCaps:
        services = {
            name.removeprefix(SERVICE_FIELD): tuple(v for v in value.split(",") if v)
            for name, value in fields.items()
            if name.startswith(SERVICE_FIELD)
        }
        features = frozenset(
            name.removeprefix(FEATURE_FIELD) for name in fields if name.startswith(FEATURE_FIELD)
        )
        return cls(
            max_jobs=int(fields["max_jobs"]),
            node_version=fields.get("node_version", ""),
            services=services,
            features=features,
            region=fields.get("region") or None,
        )


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """Resource use in percent, as the node reports it."""

    cpu_pct: float
    mem_pct: float
    gpu_pct: float | None = None

    def args(self) -> list[str | float]:
        return [self.cpu_pct, "" if self.gpu_pct is None else self.gpu_pct, self.mem_pct]


# --- presence and capabilities ------------------------------------------------------------------


class PublishOutcome(StrEnum):
    CAPS_WRITTEN = "CAPS_WRITTEN"
    CAPS_UNCHANGED = "CAPS_UNCHANGED"
    NOT_PRESENT = "NOT_PRESENT"  # an update after the presence expired: register again
    NOT_OWNER = "NOT_OWNER"  # a newer connection holds the node


async def node_enlist(*, node_id: str, client: RedisCluster | None = None) -> None:
    """List the node in its directory shard, stamped with the shard's clock.

    ``node_publish(register=True)`` calls this before it takes the presence, so a present node
    is always listed and a prune that read an older stamp leaves the entry alone.
    """
    await SCRIPTS.call(
        "node_enlist",
        keys=[keys.node_directory_of(node_id)],
        args=[node_id],
        client=client,
        subject=node_id,
    )


@dataclass(frozen=True, slots=True)
class Published:
    """``previous``: on register, the channel that held the node before (close it), or None."""

    outcome: PublishOutcome
    previous: str | None


async def node_publish(
    *,
    node_id: str,
    channel: str,
    caps: NodeCaps,
    load: NodeLoad,
    register: bool,
    drained: bool = False,
    client: RedisCluster | None = None,
) -> Published:
    """Write presence, capabilities and load.

    ``register=True`` (a new connection): enlist the node in its directory shard, then take its
    presence unconditionally and set ``drained``. ``register=False`` (a capability change on
    the connection that holds the node): compare-and-set on the presence holder; ``drained``
    is kept.
    """
    cluster = client or get_client()
    if register:
        # Directory first: a present node is then always in the directory (see prune).
        await node_enlist(node_id=node_id, client=cluster)
    fields: list[str] = []
    for name, value in caps.fields().items():
        fields += [name, value]
    reply = await SCRIPTS.call(
        "node_publish",
        keys=[keys.node_presence(node_id), keys.node_caps(node_id)],
        args=[
            channel,
            "1" if register else "0",
            "1" if drained else "0",
            presence_ttl_ms(),
            caps_ttl_ms(),
            caps.digest(),
            *load.args(),
            *fields,
        ],
        client=cluster,
        subject=node_id,
    )
    return Published(PublishOutcome(reply.code), reply.text(0) or None)


class HeartbeatOutcome(StrEnum):
    OK = "OK"
    NOT_PRESENT = "NOT_PRESENT"  # presence expired: publish with register=True
    NOT_OWNER = "NOT_OWNER"  # a newer connection holds the node: close this one


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``renewed``: reservations renewed of the running jobs; ``live``: live reservations."""

    outcome: HeartbeatOutcome
    renewed: int
    live: int


async def node_heartbeat(
    *,
    node_id: str,
    channel: str,
    load: NodeLoad,
    running: Collection[str] = (),
    client: RedisCluster | None = None,
) -> Heartbeat:
    """Refresh presence and load, and renew the reservations of the ``running`` job ids."""
    reply = await SCRIPTS.call(
        "node_heartbeat",
        keys=[
            keys.node_presence(node_id),
            keys.node_caps(node_id),
            keys.node_reservations(node_id),
            keys.node_holders(node_id),
        ],
        args=[
            channel,
            presence_ttl_ms(),
            caps_ttl_ms(),
            reservation_ttl_ms(),
            *load.args(),
            *running,
        ],
        client=client,
        subject=node_id,
    )
    return Heartbeat(HeartbeatOutcome(reply.code), reply.number(0), reply.number(1))


class OwnedOutcome(StrEnum):
    DONE = "DONE"
    NOT_PRESENT = "NOT_PRESENT"
    NOT_OWNER = "NOT_OWNER"


async def node_remove(
    *, node_id: str, channel: str, client: RedisCluster | None = None
) -> OwnedOutcome:
    """Take the node offline when ``channel``'s socket closes, if that socket still holds it."""
    reply = await SCRIPTS.call(
        "node_remove",
        keys=[keys.node_presence(node_id), keys.node_caps(node_id)],
        args=[channel],
        client=client,
        subject=node_id,
    )
    return OwnedOutcome.DONE if reply.code is Code.REMOVED else OwnedOutcome(reply.code)


async def node_drain(
    *,
    node_id: str,
    drained: bool = True,
    channel: str | None = None,
    client: RedisCluster | None = None,
) -> OwnedOutcome:
    """Set (or clear) the drained flag; with ``channel``, only if that connection holds the node."""
    reply = await SCRIPTS.call(
        "node_drain",
        keys=[keys.node_presence(node_id), keys.node_caps(node_id)],
        args=[channel or "", "1" if drained else "0"],
        client=client,
        subject=node_id,
    )
    return OwnedOutcome.DONE if reply.code is Code.UPDATED else OwnedOutcome(reply.code)


async def node_present(*, node_id: str, client: RedisCluster | None = None) -> bool:
    """Whether the node is online now (its presence key exists)."""
    cluster = client or get_client()
    presence = keys.node_presence(node_id)
    found: int = await bounded("node_present", cluster, cluster.exists(presence), key=presence)
    return found == 1


async def node_channel(*, node_id: str, client: RedisCluster | None = None) -> str | None:
    """The channel of the consumer holding the node's socket (the presence holder), or None."""
    cluster = client or get_client()
    presence = keys.node_presence(node_id)
    value = await bounded("node_channel", cluster, cluster.get(presence), key=presence)
    return str(value) if value else None


async def node_directory_prune(*, horizon_ms: int, client: RedisCluster | None = None) -> int:
    """Drop directory entries of nodes without presence, registered over ``horizon_ms`` ago.

    A periodic, leader-elected duty. Returns how many entries went.
    1. Read every directory shard with its stamps (one pipeline).
    2. Check the presence of every listed node (one pipeline).
    3. Per shard, remove the absent ones whose stamp is unchanged (node_directory_prune, CAS).
    """
    cluster = client or get_client()
    shards = keys.node_directories()
    pipe = cluster.pipeline(transaction=False)
    for shard in shards:
        pipe.zrange(shard, 0, -1, withscores=True)
    listings: list[list[tuple[str, float]]] = await bounded(
        "node_directory", cluster, pipe.execute()
    )
    entries = [
        (shard, node, int(stamp))
        for shard, rows in zip(shards, listings, strict=True)
        for node, stamp in rows
    ]
    if not entries:
        return 0
    pipe = cluster.pipeline(transaction=False)
    for _, node_id, _ in entries:
        pipe.exists(keys.node_presence(node_id))
    present: list[int] = await bounded("node_presence", cluster, pipe.execute())
    gone: dict[str, list[str | int]] = {}
    for (shard, node_id, stamp), alive in zip(entries, present, strict=True):
        if not alive:
            gone.setdefault(shard, []).extend([node_id, stamp])
    removed = 0
    for shard, pairs in gone.items():
        reply = await SCRIPTS.call(
            "node_directory_prune", keys=[shard], args=[horizon_ms, *pairs], client=cluster
        )
        removed += reply.number(0)
    return removed
