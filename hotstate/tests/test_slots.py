"""Every call the wrappers make passes KEYS that all live in one slot, for every script.

The test drives every wrapper once (with ids full of characters that could break a hash tag),
records each EVALSHA's keys at the loader, and asks the cluster itself (CLUSTER KEYSLOT) where
each key lives. It also fails if a script was never called, so a new script needs a call here.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from hotstate import instances, jobs, mna, nodes, sessions, slots, timers
from hotstate.directory import node_directory_read
from hotstate.jobs import JobState
from hotstate.scripts import SCRIPTS, ScriptRegistry
from hotstate.tests.helpers import LOAD, caps

# Ids that would end or nest a hash tag, or collide across parts, if keys did not escape them.
NODE = "node:{a}b@c"
JOB = "job}{x:1"
TENANT = "acme:eu"
REQUEST = "req{1}:a"
SESSION = "sess:{s}"


async def tour(client: RedisCluster) -> None:
    """One call of every wrapper that runs a script."""
    await nodes.node_publish(
        node_id=NODE, channel="c1", caps=caps(), load=LOAD, register=True, client=client
    )
    await nodes.node_publish(
        node_id=NODE, channel="c1", caps=caps(), load=LOAD, register=False, client=client
    )
    await nodes.node_heartbeat(node_id=NODE, channel="c1", load=LOAD, running=[JOB], client=client)
    await nodes.node_drain(node_id=NODE, drained=False, client=client)
    await jobs.request_claim(
        tenant=TENANT, request_id=REQUEST, job_id=JOB, lease_ms=60_000, client=client
    )
    await jobs.job_create(
        job_id=JOB, tenant=TENANT, request_id=REQUEST, session_id=SESSION, service_id="asr",
        service_version="v1", features=[], payload_json="{}", timeout_ms=1000, client=client,
    )  # fmt: skip
    await slots.slot_reserve(
        node_id=NODE, job_id=JOB, attempt=1, service_id="asr", service_version="v1", client=client
    )
    await jobs.job_transition(
        job_id=JOB, attempt=1, to=JobState.DISPATCHED, node_id=NODE, client=client
    )
    await jobs.job_subscribe(job_id=JOB, tenant=TENANT, session_id="other", client=client)
    await jobs.job_settle(job_id=JOB, done={"owe:deliver": "1"}, client=client)
    await slots.slot_release(node_id=NODE, job_id=JOB, attempt=1, client=client)
    await jobs.request_release(tenant=TENANT, request_id=REQUEST, job_id=JOB, client=client)
    entry = await mna.mna_enqueue(
        node_id=NODE, service_id="asr", service_version="v1", reason="x", client=client
    )
    await mna.mna_handle(
        event=mna.MnaEvent(0, entry, NODE, "asr@x", "v1", "x", None, None), client=client
    )
    await mna.mna_seat(holder="inst:{1}", group="g:{x}", client=client)
    await mna.mna_claim(shard=1, consumer="c:{1}", group="g:{x}", client=client)
    await instances.instance_register(instance_id="inst:{1}", ttl_ms=1000, client=client)
    await instances.leader_acquire(duty="du:{t}", token="t", ttl_ms=1000, client=client)
    await timers.timer_arm(job_id=JOB, due_ms=1, client=client)
    await timers.timers_claim(now_ms=2, limit=5, client=client)
    await timers.timer_disarm(job_id=JOB, client=client)
    await sessions.session_start(
        session_id=SESSION, tenant=TENANT, channel="c", resume_ttl_ms=1000, client=client
    )
    await sessions.session_renew(session_id=SESSION, channel="c", resume_ttl_ms=1000, client=client)
    await sessions.session_result_expect(
        session_id=SESSION, job_id=JOB, request_id=REQUEST, check_after_ms=0, client=client
    )
    await sessions.session_outbox_sweep(
        session_id=SESSION, pending_limit=5, due_limit=5, recheck_ms=1000, client=client
    )
    await sessions.session_result_put(
        session_id=SESSION, job_id=JOB, frame_json="{}", client=client
    )
    await sessions.session_result_take(
        session_id=SESSION, job_id=JOB, token="c:{1}#1", client=client
    )
    await sessions.session_result_return(
        session_id=SESSION, job_id=JOB, frame_json="{}", client=client
    )
    await sessions.session_result_forgo(session_id=SESSION, job_id=JOB, client=client)
    await sessions.session_close(session_id=SESSION, channel="c", resume_ttl_ms=1000, client=client)
    await sessions.session_resume(
        session_id=SESSION, tenant=TENANT, channel="d", resume_ttl_ms=1000, client=client
    )
    await nodes.node_remove(node_id=NODE, channel="c1", client=client)
    await nodes.node_directory_prune(horizon_ms=0, client=client)
    await node_directory_read(client=client)


async def test_every_call_of_every_script_keeps_its_keys_in_one_slot(
    hot: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, list[list[str]]] = defaultdict(list)
    for path in ("_evalsha", "_evalsha_durable"):
        original = getattr(ScriptRegistry, path)

        async def recording(self, client, script, keys, args, original=original):  # type: ignore[no-untyped-def]
            calls[script.name].append(list(keys))
            return await original(self, client, script, keys, args)

        monkeypatch.setattr(ScriptRegistry, path, recording)
    await tour(hot)

    assert set(calls) == set(SCRIPTS.scripts), "scripts the tour does not call"
    checked = 0
    for name, key_lists in calls.items():
        for key_list in key_lists:
            assert len(key_list) == SCRIPTS[name].numkeys
            server_slots = {await hot.cluster_keyslot(key) for key in key_list}
            assert len(server_slots) == 1, f"{name}: {key_list} span slots {server_slots}"
            assert server_slots == {key_slot(key_list[0].encode())}
            checked += 1
    assert checked >= len(SCRIPTS.scripts)
