"""The scheduler's HTTP API and health endpoints, through the standard library."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from tests.e2e.harness.raw import WAIT_S, Frame

TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELLED", "TIMED_OUT"})


def http(
    method: str,
    url: str,
    *,
    api_key: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    timeout: float = WAIT_S,
) -> tuple[int, Frame]:
    """One HTTP request with the standard library: the status and the JSON body (blocking: run
    it in a thread from async code).

    Environment proxies are ignored: every request goes straight to the loopback scheduler.
    """
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if api_key is not None:
        request.add_header("Authorization", f"Bearer {api_key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


async def job_until_terminal(
    base_url: str, api_key: str, job_id: str, *, timeout: float = WAIT_S
) -> Frame:
    """``GET /api/v1/jobs/<job_id>`` until the job has ended; its last body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, body = await asyncio.to_thread(
            http, "GET", f"{base_url}/api/v1/jobs/{job_id}", api_key=api_key
        )
        assert status == 200, body
        if body["status"] in TERMINAL:
            return body
        assert loop.time() < deadline, f"job {job_id} not ended within {timeout} s: {body}"
        await asyncio.sleep(0.05)
