"""What one consumer asks of another through the channel layer: typed events, one send helper.

A job's assignment reaches the consumer holding its node's socket, a result notice the consumer
holding a session's socket, wherever they run. Each event is a frozen dataclass whose ``type``
names the consumer method that handles it (``job.assign`` → ``job_assign``, STYLE.md); frames
travel already serialised, so the receiving consumer only writes them to its socket. Receivers
rebuild the event with ``Event.of(message)``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Self

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from clusterlayer import ProcessGone
from clusterlayer.errors import UNAVAILABLE_ERRORS as LAYER_DOWN

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    type: ClassVar[str]

    def message(self) -> dict[str, Any]:
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in _fields(self)}}

    @classmethod
    def of(cls, message: dict[str, Any]) -> Self:
        return cls(**{f.name: message[f.name] for f in _fields(cls)})


def _fields(event: Event | type[Event]) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(event)


@dataclasses.dataclass(frozen=True, slots=True)
class JobAssignEvent(Event):
    """To a node's socket: send this ``job_assign``."""

    type: ClassVar[str] = "job.assign"
    job_id: str
    attempt: int
    frame: str


@dataclasses.dataclass(frozen=True, slots=True)
class JobCancelEvent(Event):
    """To a node's socket: send this ``job_cancel``; then, if ``owed`` names them, give the
    node's slot back and settle those follow-ups on the job (the socket does it, after the
    frame: so no job sent to the node later can overtake the cancel)."""

    type: ClassVar[str] = "job.cancel"
    job_id: str
    frame: str
    owed: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class JobProgressEvent(Event):
    """To a session's socket: send this ``job_progress`` (best effort)."""

    type: ClassVar[str] = "job.progress"
    frame: str


@dataclasses.dataclass(frozen=True, slots=True)
class SessionDeliverEvent(Event):
    """To a session's socket: a final result waits in the session's outbox; take and send it."""

    type: ClassVar[str] = "session.deliver"
    job_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class PeerReplacedEvent(Event):
    """To a socket: a newer connection of the same node or session took over; close with 4409."""

    type: ClassVar[str] = "peer.replaced"


async def event_send(channel: str, event: Event) -> bool:
    """Send ``event`` to the consumer on ``channel``; False if it cannot get there.

    A channel whose process is gone (a drained or crashed instance) or that is full (its
    receiver is stuck) is not an error of the sender's: its peer reconnects elsewhere, results
    wait in outboxes, and jobs are placed again by the caller.
    """
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    try:
        await layer.send(channel, event.message())
    except ProcessGone:
        logger.debug("channel %s is gone; %s not sent", channel, event.type)
        return False
    except ChannelFull:
        logger.warning("channel %s is full; %s dropped", channel, event.type)
        return False
    except LAYER_DOWN as exc:
        # The layer's Redis cannot answer now (a stall, a failover): the event may or may not
        # have been queued. Callers treat it as not sent and keep what they owe for a retry.
        logger.warning("channel %s unreachable (%s); %s not sent", channel, exc, event.type)
        return False
    return True
