"""Writes to node records."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone

from core.credentials import secret_display_prefix, secret_hash, secret_new
from core.errors import BadMessage, Unauthorized
from core.events import JobCancelEvent, event_send
from core.runtime import INSTANCE_ID
from hotstate import codes as hcodes
from hotstate import instances, slots
from hotstate import jobs as hjobs
from hotstate import nodes as hnodes
from hotstate.client import build_client
from hotstate.directory import NodeView
from hotstate.errors import DependencyDown
from hotstate.nodes import NodeCaps, NodeLoad
from nodes.models import Node
from nodes.snapshot import snapshot_get
from protocol import NodeHeartbeat, NodeJobCancel, NodeRegister, Resources, ServiceRef, dump

logger = logging.getLogger(__name__)

NODE_TOKEN_PREFIX = "nt"
# Offline nodes stay in the directory this long before the prune duty drops them.
PRUNE_HORIZON_MS = 10 * 60 * 1000


def node_create(*, name: str) -> tuple[Node, str]:
    """A new node record and its token; the token is returned once and stored only hashed."""
    name = name.strip()
    if not name:
        raise BadMessage("a node needs a name")
    if Node.objects.filter(name=name).exists():
        raise BadMessage(f"a node named {name!r} already exists")
    node = Node(name=name)
    token = node_token_issue(node=node)
    return node, token


def node_token_issue(*, node: Node) -> str:
    """A new token for ``node`` (saving a new record too); any old token stops working at once."""
    token = secret_new(prefix=NODE_TOKEN_PREFIX)
    node.token_hash = secret_hash(token)
    node.token_prefix = secret_display_prefix(token)
    if node.pk is None:
        node.save()
    else:
        node.save(update_fields=["token_hash", "token_prefix"])
    return token


def node_authenticate(*, token: str) -> Node:
    """The enabled node that ``token`` belongs to."""
    if not token:
        raise Unauthorized("a node token is required")
    node = Node.objects.filter(token_hash=secret_hash(token), enabled=True).first()
    if node is None:
        raise Unauthorized("unknown or disabled node token")
    return node


def node_registration_record(*, node_id: str, capabilities: dict[str, object]) -> None:
    """Remember what a node declared at registration, and when it was last seen."""
    with transaction.atomic():
        Node.objects.filter(node_id=node_id).update(
            declared_capabilities=capabilities, last_seen_at=timezone.now()
        )


def node_drained_set(*, node: Node, drained: bool) -> None:
    """Drain (or undrain) a node: the record keeps it across reconnects, and a node online now
    stops getting jobs at once (an operator's action, from the admin)."""
    node.drained = drained
    node.save(update_fields=["drained"])
    async_to_sync(_drained_live)(node_id=node.node_id, drained=drained)


async def _drained_live(*, node_id: str, drained: bool) -> None:
    # A client of its own: this runs in a short-lived loop of a sync request thread.
    client = build_client()
    try:
        await hnodes.node_drain(node_id=node_id, drained=drained, client=client)
    except DependencyDown:
        logger.warning(
            "node %s: drain flag saved; Redis unavailable, applies at reconnect", node_id
        )
    finally:
        await client.aclose()


# --- live connections (async: called by the node consumer) -------------------------------------


@dataclass(frozen=True)
class Connected:
    node_id: str
    previous_channel: str | None
    caps: NodeCaps
    drained: bool


def caps_declared(frame: NodeRegister) -> NodeCaps:
    """The capabilities a node declares when it registers."""
    return NodeCaps(
        max_jobs=frame.max_jobs,
        node_version=frame.version,
        services=_services_map(frame.services),
        features=tuple(frame.features),
        region=frame.region,
    )


def caps_changed(frame: NodeHeartbeat, *, previous: NodeCaps) -> NodeCaps:
    """``previous`` with what a heartbeat changed (it only sends the fields that changed)."""
    return replace(
        previous,
        max_jobs=frame.max_jobs if frame.max_jobs is not None else previous.max_jobs,
        services=(
            _services_map(frame.services) if frame.services is not None else previous.services
        ),
        features=tuple(frame.features) if frame.features is not None else previous.features,
    )


def _services_map(services: list[ServiceRef]) -> dict[str, list[str]]:
    mapped: dict[str, list[str]] = {}
    for service in services:
        versions = mapped.setdefault(service.id, [])
        if service.version is not None:
            versions.append(service.version)
    return mapped


def load_from(resources: Resources) -> NodeLoad:
    return NodeLoad(cpu_pct=resources.cpu_pct, mem_pct=resources.mem_pct, gpu_pct=resources.gpu_pct)


async def node_connect(*, token: str, frame: NodeRegister, channel: str) -> Connected:
    """Authenticate a node's socket and make it schedulable.

    1. The token names an enabled node record (else ``Unauthorized``).
    2. Presence, capabilities and load go to Redis; the presence names ``channel``, so jobs for
       the node go to this socket and an older socket learns it was replaced.
    3. This instance's snapshot learns of the node at once; other instances on their next
       refresh. The declaration is kept on the node record for operators and the catalog.
    """
    node = await database_sync_to_async(node_authenticate)(token=token)
    try:
        caps = caps_declared(frame)
    except ValueError as exc:
        raise BadMessage(f"node_register: {exc}") from None
    load = load_from(frame.resources)
    published = await hnodes.node_publish(
        node_id=node.node_id,
        channel=channel,
        caps=caps,
        load=load,
        register=True,
        drained=node.drained,
    )
    snapshot_get().note_registered(
        NodeView.registered(
            node_id=node.node_id, channel=channel, caps=caps, load=load, drained=node.drained
        )
    )
    await database_sync_to_async(node_registration_record)(
        node_id=node.node_id, capabilities=frame.model_dump(exclude={"token", "type"})
    )
    previous = published.previous if published.previous != channel else None
    logger.info("node %s registered on %s (max_jobs %s)", node.node_id, channel, caps.max_jobs)
    return Connected(
        node_id=node.node_id, previous_channel=previous, caps=caps, drained=node.drained
    )


async def node_beat(
    *, node_id: str, channel: str, frame: NodeHeartbeat, caps: NodeCaps, drained: bool
) -> NodeCaps | None:
    """Apply a heartbeat; return the capabilities now in force, or None if the socket lost
    the node to a newer connection (the consumer then closes with 4409).

    ``drained``: whether this connection is drained (by its record or by ``node_drain``); a
    node published again after its presence expired stays drained.
    """
    load = load_from(frame.resources)
    changed = (frame.services, frame.features, frame.max_jobs) != (None, None, None)
    if changed:
        try:
            caps = caps_changed(frame, previous=caps)
        except ValueError as exc:
            raise BadMessage(f"node_heartbeat: {exc}") from None
    beat = await hnodes.node_heartbeat(
        node_id=node_id, channel=channel, load=load, running=frame.running
    )
    if beat.outcome is hnodes.HeartbeatOutcome.NOT_OWNER:
        return None
    if beat.outcome is hnodes.HeartbeatOutcome.NOT_PRESENT or changed:
        # Expired while silent (or capabilities changed): publish again from this socket.
        published = await hnodes.node_publish(
            node_id=node_id,
            channel=channel,
            caps=caps,
            load=load,
            register=beat.outcome is hnodes.HeartbeatOutcome.NOT_PRESENT,
            drained=drained,
        )
        if published.outcome is hnodes.PublishOutcome.NOT_OWNER:
            return None
        # This instance schedules with the new capabilities at once, not after its next refresh.
        snapshot_get().note_published(
            NodeView.registered(
                node_id=node_id, channel=channel, caps=caps, load=load, drained=drained
            )
        )
    return caps


async def node_disconnect(*, node_id: str, channel: str) -> None:
    """The socket closed: the node is offline unless a newer socket holds it already."""
    outcome = await hnodes.node_remove(node_id=node_id, channel=channel)
    if outcome is hnodes.OwnedOutcome.DONE:
        snapshot_get().note_removed(node_id)
    logger.info("node %s disconnected from %s (%s)", node_id, channel, outcome)


async def node_drain_request(*, node_id: str, channel: str) -> None:
    """The node asked for no new jobs (``node_drain``); running ones finish."""
    await hnodes.node_drain(node_id=node_id, drained=True, channel=channel)
    snapshot_get().note_drained(node_id)


class Told(StrEnum):
    """What became of a ``job_cancel`` for a node."""

    TOLD = "TOLD"  # queued to the node's socket, which sends it and then frees the slot
    OFFLINE = "OFFLINE"  # no socket holds the node: nothing to tell, the slot is free to go
    UNREACHABLE = "UNREACHABLE"  # its socket's channel refused it (full, or stalled): try again


async def node_job_cancel(
    *, node_id: str, frame: NodeJobCancel, owed: Mapping[str, str] | None = None
) -> Told:
    """Tell the node's socket to send ``job_cancel`` and, after it, to settle ``owed``.

    ``owed``: the job's follow-ups the socket settles once the frame is out (the cancel, and the
    release of the node's slot). Freed any earlier, the slot could take a new job that reaches
    the node before the cancel does (the new job's ``job_assign`` may come from the socket's
    own process, the cancel through a stalled Redis stream): one job too many on the node.
    """
    channel = await hnodes.node_channel(node_id=node_id)
    if not channel:
        return Told.OFFLINE
    event = JobCancelEvent(job_id=frame.job_id, frame=dump(frame), owed=dict(owed or {}))
    return Told.TOLD if await event_send(channel, event) else Told.UNREACHABLE


async def node_job_stopped(*, node_id: str, job_id: str, owed: Mapping[str, str]) -> None:
    """The node's socket sent ``job_cancel``: free the job's slot, settle the follow-ups.

    Releasing twice is harmless; a failure leaves them owed, and the job's sweep sends the
    cancel again.
    """
    try:
        release = owed.get(hjobs.OWE_RELEASE + node_id)
        if release is not None:
            released = await slots.slot_release(
                node_id=node_id, job_id=job_id, attempt=int(release)
            )
            snapshot_get().note_released(node_id, live=released.live)
        await hjobs.job_settle(job_id=job_id, done=owed)
    except (DependencyDown, hcodes.JobNotFound) as exc:
        logger.warning(
            "node %s: job %s stopped; settling left to the sweep: %s", node_id, job_id, exc
        )


async def directory_prune() -> None:
    """Drop long-offline nodes from the directory; one process at a time (leader lock)."""
    if not await instances.leader_acquire(duty="directory_prune", token=INSTANCE_ID, ttl_ms=60_000):
        return
    removed = await hnodes.node_directory_prune(horizon_ms=PRUNE_HORIZON_MS)
    if removed:
        logger.info("pruned %s offline nodes from the directory", removed)
