"""The ``mna-storm`` fault's nodes in an OS process of their own.

Why a process: the storm test (DESIGN.md's acceptance test) times the jobs of other services
while ≥ 1,000 ``model_not_available`` reports/s arrive. Sent from the simulator's event loop,
the reports delay the very sessions and nodes being timed (on a 2-core machine most of the rise
was the client's own loop). Here they come from another interpreter, with its own loop and GIL,
over real WebSockets from real nodes, so what the test sees is the scheduler's share.

``StormProcess`` is the simulator's side: ``start()`` runs ``python -m
scheduler_sdk.simulator.storm`` (at ``NICENESS``) and returns once every storm node is
registered, ``storm()`` has them send for a while and returns what was sent, ``stop()`` ends the
process. They talk over the child's stdin and stdout, one JSON object a line (the node tokens go
over stdin, not on the command line, where ``ps`` would show them):

- parent: ``{"url": ws://.../ws/node/, "service": id, "tokens": [...], "connect_timeout_s": s}``
- child: ``{"ready": nodes}`` once every node is registered, or ``{"error": why}`` and exits
- parent: ``{"rate": reports/s, "seconds": s}``, as often as it likes
- child: ``{"nodes", "sent", "seconds", "rate_limited"}`` (a ``StormResult``) when done
- parent closes stdin: the child stops its nodes and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import protocol as p
from scheduler_sdk.simulator.config import SimulationError
from scheduler_sdk.simulator.faults import StormResult, send_storm, storm_agent

logger = logging.getLogger(__name__)

MODULE = "scheduler_sdk.simulator.storm"
ROOT = Path(__file__).resolve().parents[2]
"""The folder ``scheduler_sdk`` (and ``protocol``) are imported from, for the child's path."""
REPLY_SLACK_S = 15.0
"""How much longer than asked the child may take to answer (a busy machine, a slow stop)."""
STOP_TIMEOUT_S = 10.0
NICENESS = 10
"""The child runs this much nicer than the simulator: the storm's senders stand for nodes on
other machines, so where the CPU is short (the storm test on a 2-core machine) the scheduler and
the timed peers go first. The storm still has to reach its rate: ``storm()`` says what it did."""
NICENESS_ENV = "SIMULATOR_STORM_NICENESS"


class StormProcess:
    """The storm nodes (one per token in ``tokens``, offering ``service``) in a child process
    connected to ``node_url``; see the module's docstring for the conversation."""

    def __init__(
        self,
        node_url: str,
        tokens: Sequence[str],
        *,
        service: str,
        connect_timeout_s: float = 10.0,
        niceness: int = NICENESS,
    ) -> None:
        self.node_url = node_url
        self.tokens = list(tokens)
        self.service = service
        self.connect_timeout_s = connect_timeout_s
        self.niceness = niceness
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        """Start the child and wait until every storm node is registered; how many there are.

        Raises ``SimulationError`` if the child could not connect them."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(_python_path()),
            NICENESS_ENV: str(self.niceness),
        }
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        setup = {
            "url": self.node_url,
            "service": self.service,
            "tokens": self.tokens,
            "connect_timeout_s": self.connect_timeout_s,
        }
        reply = await self._ask(setup, timeout_s=self.connect_timeout_s + REPLY_SLACK_S)
        if "ready" not in reply:
            await self.stop()
            raise SimulationError(f"the storm nodes could not connect: {reply.get('error')}")
        return int(reply["ready"])

    async def storm(self, *, rate: float, seconds: float) -> list[str]:
        """Have the storm nodes send ``rate`` reports/s for ``seconds``; notes on what they
        sent (the fault's notes, as ``faults.mna_storm`` gives them)."""
        reply = await self._ask(
            {"rate": rate, "seconds": seconds}, timeout_s=seconds + REPLY_SLACK_S
        )
        if "sent" not in reply:
            raise RuntimeError(f"the storm process failed: {reply.get('error')}")
        result = StormResult(**reply)
        return [result.note(self.service) + f" (from process {self.pid})"]

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def stop(self) -> None:
        """Close the child's stdin (it stops its nodes and exits) and wait for it; kill it if
        it does not exit within ``STOP_TIMEOUT_S``."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _ask(self, message: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.write((json.dumps(message) + "\n").encode())
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
        if not line:
            return {"error": f"the storm process exited (code {await process.wait()})"}
        reply: dict[str, Any] = json.loads(line)
        return reply


def _python_path() -> list[str]:
    inherited = os.environ.get("PYTHONPATH", "")
    return [str(ROOT), *(part for part in inherited.split(os.pathsep) if part)]


# --- the child --------------------------------------------------------------------------------


async def serve_storm(lines: asyncio.Queue[str | None], reply: Any) -> int:
    """The child's whole conversation: ``lines`` are stdin's (``None`` at its end), ``reply``
    writes one object to stdout. The exit code."""
    first = await lines.get()
    if first is None:
        return 0
    setup = json.loads(first)
    service = setup["service"]
    agents = [
        storm_agent(setup["url"], token, service=service, options={}) for token in setup["tokens"]
    ]
    timeout = float(setup.get("connect_timeout_s", 10.0))
    try:
        await asyncio.gather(*(agent.start(timeout_s=timeout) for agent in agents))
    except Exception as exc:
        reply({"error": str(exc) or repr(exc)})
        await _stop_all(agents)
        return 1
    reply({"ready": len(agents)})
    try:
        while (line := await lines.get()) is not None:
            order = json.loads(line)
            result = await send_storm(
                agents, service=service, rate=float(order["rate"]), seconds=float(order["seconds"])
            )
            reply(result.as_dict())
    finally:
        await _stop_all(agents)
        limited = sum(a.stats.errors_received.get(p.ErrorCode.RATE_LIMITED, 0) for a in agents)
        if limited:  # late ones too: a server that fell behind sees a burst when it catches up
            logger.warning("the storm nodes got %d RATE_LIMITED errors in all", limited)
    return 0


async def _stop_all(agents: Sequence[Any]) -> None:
    await asyncio.gather(*(agent.stop(grace_s=0) for agent in agents), return_exceptions=True)


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Feed stdin's lines to ``lines``, ``None`` at its end. It runs in a daemon thread: a read
    would block the loop, and a thread of the loop's executor would keep the process alive
    after an early exit, its read waiting for a parent that has nothing more to say."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, None)


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _main() -> int:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_read_stdin, args=(loop, lines), daemon=True).start()
    return await serve_storm(lines, _reply)


def main() -> None:
    niceness = int(os.environ.get(NICENESS_ENV, "0"))
    if niceness:
        os.nice(niceness)
    logging.basicConfig(level=logging.WARNING, format="storm %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(_main()))


if __name__ == "__main__":
    main()
