"""``manage.py simulate``: its options, the credentials it makes, and whole runs against the
SDK's in-memory scheduling fake (a run against the real scheduler is the end-to-end suite's)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core.errors import Unauthorized
from jobs.management.commands.simulate import simulation_credentials, websocket_base
from nodes.models import Node
from nodes.services import node_authenticate
from scheduler_sdk.tests.fake_scheduler import running
from scheduler_sdk.tests.scheduling_fake import SchedulingFake
from sessions.services import api_key_authenticate

pytestmark = pytest.mark.django_db

FAST = ["--job-ms", "10", "--grace", "0.3", "--job-timeout-ms", "1000", "--seed", "3"]


@pytest.fixture
def fake_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A ``SchedulingFake`` on its own thread and loop (the command runs ``asyncio.run``);
    parametrize it indirectly with a set of misbehaviours to make it break promises."""
    fake = SchedulingFake(misbehave=getattr(request, "param", frozenset()))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running(fake):
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    yield fake.url.replace("ws://", "http://")
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)
    loop.close()


def simulate(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("simulate", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_its_credentials_authenticate_and_a_second_run_rekeys_the_same_nodes() -> None:
    tokens, key = simulation_credentials(prefix="t", nodes=2)
    nodes = [node_authenticate(token=token) for token in tokens]
    assert [n.name for n in nodes] == ["t-node-1", "t-node-2"]
    api_key = api_key_authenticate(key=key)
    assert api_key.tenant == "sim"

    again, new_key = simulation_credentials(prefix="t", nodes=2)
    assert [node_authenticate(token=t).node_id for t in again] == [n.node_id for n in nodes]
    assert Node.objects.filter(name__startswith="t-node-").count() == 2
    assert api_key_authenticate(key=new_key).pk == api_key.pk
    with pytest.raises(Unauthorized):
        node_authenticate(token=tokens[0])  # the old secrets stop working
    with pytest.raises(Unauthorized):
        api_key_authenticate(key=key)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000"),
        ("https://sched.example.com/", "wss://sched.example.com"),
        ("ws://h:1/ws/node/", "ws://h:1"),
        ("0.0.0.0:9000", "ws://127.0.0.1:9000"),
    ],
)
def test_the_url_becomes_the_websocket_base(url: str, expected: str) -> None:
    assert websocket_base(url) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--forever", "--jobs", "5"], "--forever runs until Ctrl-C"),
        (["--fail-rate", "2"], "fail_rate must be within 0..1"),
        (["--sessions", "0"], "--sessions at least 1"),
        (["--url", "ftp://x"], "--url must be an http"),
    ],
)
def test_bad_options_are_refused_before_anything_is_created(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message.replace(".", r"\.")):
        simulate(*args)
    assert not Node.objects.exists()


def test_an_unreachable_scheduler_fails_with_a_hint() -> None:
    with pytest.raises(CommandError, match="is the scheduler running"):
        simulate("--url", "http://127.0.0.1:9", "--connect-timeout", "0.5", "--quiet")


def test_a_run_prints_progress_to_stderr_and_the_summary_to_stdout(fake_url: str) -> None:
    out, err = simulate("--url", fake_url, "--nodes", "2", "--jobs", "30", "--every", "0.2", *FAST)
    assert "submitted   30" in out
    assert "completed   30" in out
    assert "No invariant violations seen." in out
    assert "Simulating 2 node(s) and 2 session(s)" in err
    assert "] submitted " in err and "submitted   30" not in err


@pytest.mark.parametrize("fake_url", [frozenset({"overbook"})], indirect=True)
def test_a_violation_fails_the_command_after_printing_the_summary(fake_url: str) -> None:
    out = StringIO()
    with pytest.raises(CommandError, match=r"[1-9]\d* invariant violation\(s\)"):
        call_command(
            "simulate", "--url", fake_url, "--max-jobs", "1", "--jobs", "8", "--quiet",
            "--frame-budget", "0", *FAST, stdout=out, stderr=StringIO(),
        )  # fmt: skip
    assert "max_jobs: node 1 was assigned job" in out.getvalue()
