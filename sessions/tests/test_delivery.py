"""Results that reach their session whatever was lost on the way: a dropped notice, a put that
never happened, a job record gone in a failover, a socket closing during a take."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from core.consumers import live_sockets
from hotstate import keys
from hotstate import sessions as hsessions
from hotstate.client import get_client
from hotstate.errors import DependencyDown
from sessions import consumers, delivery
from sessions.consumers import SessionConsumer
from tests.support.inprocess import (
    Peer,
    accepted_job,
    new_api_key,
    online_node,
    online_session,
    reply,
    session_peer,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]

GRACE_S = 0.2


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweeps every 0.1 s, expectations checked after 0.2 s."""
    monkeypatch.setattr(delivery, "SWEEP_INTERVAL_S", 0.1)
    monkeypatch.setattr(delivery, "EXPECT_GRACE_S", GRACE_S)
    monkeypatch.setattr(delivery, "EXPECT_RECHECK_S", GRACE_S)


@pytest.fixture
def notices_dropped(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every ``session.deliver`` meets a full channel (capacity 100, shared with progress): the
    layer refuses it with ChannelFull, as it does under load."""
    layer: Any = get_channel_layer()
    original = layer.send
    dropped: list[dict[str, Any]] = []

    async def send(channel: str, message: dict[str, Any]) -> None:
        if message.get("type") == "session.deliver":
            dropped.append(message)
            raise ChannelFull(channel)
        await original(channel, message)

    monkeypatch.setattr(layer, "send", send)
    yield dropped


async def finish(node: Peer, assign: dict[str, Any], **result: Any) -> None:
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True, result=result))


async def forget_job(job_id: str) -> None:
    """The job's record vanishes, as when a primary fails over before its writes reached the
    replica."""
    await get_client().delete(keys.job_record(job_id), keys.job_subscribers(job_id))


async def test_a_result_whose_notice_was_dropped_arrives_from_the_sweep(
    notices_dropped: list[dict[str, Any]],
) -> None:
    _, node = await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await finish(node, assign, text="late but here")
    result = await session.receive(timeout=3.0)  # a sweep turn is due every second
    assert (result["type"], result["job_id"], result["result"]) == (
        "job_result",
        assign["job_id"],
        {"text": "late but here"},
    )
    assert notices_dropped, "the notice was not dropped: the test proves nothing"
    assert await session.nothing(1.2)


@pytest.mark.usefixtures("quick")
async def test_an_expected_job_whose_record_vanished_is_answered_job_lost_once() -> None:
    _, node = await online_node("gpu")
    session_id, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await delivery.outbox_expect(session_id=session_id, job_id=assign["job_id"])
    await forget_job(assign["job_id"])
    result = await session.receive()
    assert result == {
        "type": "job_result",
        "job_id": assign["job_id"],
        "request_id": "r-1",
        "ok": False,
        "error": {"code": "JOB_LOST", "message": result["error"]["message"]},
    }
    assert await session.nothing(4 * GRACE_S)


@pytest.mark.usefixtures("quick")
async def test_a_session_away_when_its_job_was_lost_gets_job_lost_on_resume() -> None:
    _, node = await online_node("gpu")
    key = await new_api_key("acme")
    session_id, session = await online_session(key)
    assign = await accepted_job(session, node, "r-1")
    await delivery.outbox_expect(session_id=session_id, job_id=assign["job_id"], request_id="r-1")
    await session.close()
    await forget_job(assign["job_id"])
    back, ready = await session_peer(key, session_id=session_id)
    assert ready["session_id"] == session_id
    result = await back.receive()
    assert (result["job_id"], result["ok"], result["error"]["code"]) == (
        assign["job_id"],
        False,
        "JOB_LOST",
    )


@pytest.mark.usefixtures("quick")
async def test_a_result_lost_with_the_outbox_is_put_again_once_the_grace_has_passed() -> None:
    _, node = await online_node("gpu")
    key = await new_api_key("acme")
    session_id, session = await online_session(key)
    assign = await accepted_job(session, node, "r-1")
    await delivery.outbox_expect(session_id=session_id, job_id=assign["job_id"])
    await session.close()
    await finish(node, assign, text="again")
    assert await node.settle() == []
    # A failover takes the session's slot back to before the put (the result is gone, the
    # job is still expected); the job's record still says how it ended.
    await get_client().delete(keys.session_outbox(session_id))
    await delivery.outbox_expect(session_id=session_id, job_id=assign["job_id"])
    back, _ = await session_peer(key, session_id=session_id)
    result = await back.receive(timeout=2 + GRACE_S)
    assert (result["job_id"], result["result"]) == (assign["job_id"], {"text": "again"})
    assert await back.nothing(4 * GRACE_S)


@pytest.mark.usefixtures("quick")
async def test_an_expected_result_delivered_normally_is_not_sent_again() -> None:
    _, node = await online_node("gpu")
    session_id, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await delivery.outbox_expect(session_id=session_id, job_id=assign["job_id"])
    await finish(node, assign, text="once")
    assert (await session.receive())["result"] == {"text": "once"}
    assert await session.nothing(4 * GRACE_S)
    # Expecting it again (a repeated submit) after it was taken changes nothing.
    await delivery.outbox_expect(session_id=session_id, job_id=assign["job_id"])
    assert await session.nothing(4 * GRACE_S)


async def test_a_result_taken_while_the_client_hangs_up_reaches_its_next_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client's close (``disconnect``) can land while ``deliver`` waits for the take; the
    frame taken must not vanish with the socket."""
    _, node = await online_node("gpu")
    key = await new_api_key("acme")
    session_id, session = await online_session(key)
    (consumer,) = [
        c for c in live_sockets() if isinstance(c, SessionConsumer) and c.session_id == session_id
    ]
    take = consumers.outbox_take

    async def take_then_hang_up(*, session_id: str, job_id: str, token: str) -> str | None:
        frame = await take(session_id=session_id, job_id=job_id, token=token)
        consumer.closing = True  # the client's close arrived during the round trip
        return frame

    monkeypatch.setattr(consumers, "outbox_take", take_then_hang_up)
    assign = await accepted_job(session, node, "r-1")
    await finish(node, assign, text="kept")
    assert await node.settle() == []
    assert await session.nothing(0.3)
    await session.close()
    monkeypatch.setattr(consumers, "outbox_take", take)
    back, _ = await session_peer(key, session_id=session_id)
    result = await back.receive()
    assert (result["job_id"], result["result"]) == (assign["job_id"], {"text": "kept"})


@pytest.mark.parametrize("ran", [True, False], ids=["take-ran", "take-never-ran"])
async def test_a_take_whose_answer_was_lost_is_repeated_and_delivered_by_the_next_sweep(
    monkeypatch: pytest.MonkeyPatch, ran: bool
) -> None:
    """The whole cluster froze (SIGSTOP) during the take: it timed out, and the server may
    still have run it on waking up (``ran``). The notice's handler must not end the consumer,
    and the next sweep turn gets the frame back and sends it, once."""
    _, node = await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    take = hsessions.session_result_take
    failed: list[str] = []

    async def take_answer_lost(**kwargs: Any) -> str | None:
        if not failed:
            failed.append(kwargs["job_id"])
            if ran:
                await take(**kwargs)
            raise DependencyDown("session_result_take: TimeoutError")
        return await take(**kwargs)

    monkeypatch.setattr(hsessions, "session_result_take", take_answer_lost)
    assign = await accepted_job(session, node, "r-1")
    await finish(node, assign, text="recovered")
    result = await session.receive(timeout=3.0)  # a sweep turn is due every second
    assert failed == [assign["job_id"]], "no take failed: the test proves nothing"
    assert (result["type"], result["job_id"], result["result"]) == (
        "job_result",
        assign["job_id"],
        {"text": "recovered"},
    )
    assert await session.nothing(1.2)
    # The consumer lives on: it answers and delivers the next result.
    assert await session.settle() == []
    assign = await accepted_job(session, node, "r-2")
    await finish(node, assign, text="next")
    assert (await session.receive())["result"] == {"text": "next"}
