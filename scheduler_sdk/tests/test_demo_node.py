from __future__ import annotations

import time

import pytest

import protocol as p
from scheduler_sdk.demo_node import build_agent, main
from scheduler_sdk.tests.fake_scheduler import NODE_TOKEN, FakeScheduler


async def test_demo_node_serves_its_fake_services(fake: FakeScheduler) -> None:
    agent = build_agent(fake.node_url, NODE_TOKEN, max_jobs=3, sleep_ms=10)
    await agent.start()
    deadline_ms = int(time.time() * 1000) + 10_000
    jobs = {
        "asr": {"text": "hi"},
        "nmt": {"text": "abc", "target": "de"},
        "tts": {"fail": "NO_VOICE"},
        "nmt2": {"unavailable": True},
    }
    try:
        for job_id, payload in jobs.items():
            service = p.ServiceRef(id=job_id.rstrip("2"))
            await fake.send_node(
                p.JobAssign(job_id=job_id, attempt=1, service=service, features=[],
                            payload=payload, deadline_ms=deadline_ms)
            )  # fmt: skip
        results = {r.frame.job_id: r.frame for r in await fake.frames("job_result", 3)}  # type: ignore[attr-defined]
        await fake.frames("model_not_available")
    finally:
        await agent.stop(grace_s=0)
    assert results["asr"].result == {"text": "hi", "language": "en"}
    assert results["nmt"].result == {"text": "cba", "target": "de"}
    failed = p.JobError(code="NO_VOICE", message="demo: tts failed on request")
    assert results["tts"].error == failed
    assert len(fake.of_type("job_progress")) == 3


def test_demo_node_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEDULER_NODE_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["--url", "ws://127.0.0.1:1/ws/node/"])
    assert exited.value.code == 2
