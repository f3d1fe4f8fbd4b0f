"""Every frame a peer may send after authenticating reaches exactly one handler.

The node and session consumers handle their own frames; the frames about jobs are registered
by the jobs app at start-up (``core.consumers.FRAME_HANDLERS``). A type nobody handles would be
answered as a second authentication, so the tables must cover the protocol exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from core.consumers import FRAME_HANDLERS, PeerConsumer
from nodes.consumers import NodeConsumer
from protocol import NODE_INBOUND, SESSION_INBOUND, Frame
from protocol.parse import message_type
from sessions.consumers import SessionConsumer


@pytest.mark.parametrize(
    ("consumer", "inbound"), [(NodeConsumer, NODE_INBOUND), (SessionConsumer, SESSION_INBOUND)]
)
def test_every_inbound_type_has_exactly_one_handler(
    consumer: type[PeerConsumer], inbound: Mapping[str, type[Frame]]
) -> None:
    answered_by_the_base = {message_type(consumer.auth_message), "ping"}
    for kind in set(inbound) - answered_by_the_base:
        own = consumer.handlers.get(kind)
        registered = FRAME_HANDLERS.get(consumer.peer, kind)
        assert (own is None) != (registered is None), f"{consumer.peer} frame {kind}"
    for kind in consumer.handlers:
        assert kind in inbound, f"{consumer.__name__} handles {kind}, not a {consumer.peer} frame"


def test_a_second_handler_for_one_frame_type_is_refused() -> None:
    async def other(consumer: object, frame: object) -> None:
        return None

    with pytest.raises(ValueError, match="job_ack"):
        FRAME_HANDLERS.register("node", "job_ack", other)
