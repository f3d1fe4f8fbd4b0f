"""A node with fake ASR, NMT and TTS services, for demos, tests and the simulator.

    SCHEDULER_NODE_TOKEN=nt_... python -m scheduler_sdk.demo_node --url ws://127.0.0.1:8000/ws/node/

Each handler sleeps (``payload.sleep_ms``, else ``--sleep-ms``), reports progress halfway and
returns a small result. ``payload.fail`` makes it raise ``JobFailed(payload.fail)``;
``payload.unavailable`` makes it raise ``ModelNotAvailable``. Exit status: 0 after SIGINT or
SIGTERM (graceful stop), 2 for a refused token (4401), 3 when replaced (4409).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from scheduler_sdk.errors import Replaced, Unauthorized
from scheduler_sdk.node import Handler, Job, JobFailed, ModelNotAvailable, NodeAgent

logger = logging.getLogger(__name__)

SERVICES = ("asr", "nmt", "tts")


def fake_handler(service: str, default_sleep_ms: int) -> Handler:
    """A handler for ``service`` that sleeps, reports progress once and returns a small result."""

    async def handle(job: Job) -> dict[str, Any]:
        payload = job.payload
        if payload.get("unavailable"):
            raise ModelNotAvailable(f"demo: {service} model unavailable")
        sleep_s = _number(payload.get("sleep_ms"), default_sleep_ms) / 1000
        await asyncio.sleep(sleep_s / 2)
        await job.progress(0.5, {"stage": "halfway"})
        await asyncio.sleep(sleep_s / 2)
        if payload.get("fail"):
            raise JobFailed(str(payload["fail"]), f"demo: {service} failed on request")
        text = str(payload.get("text", "hello world"))
        if service == "asr":
            return {"text": text, "language": "en"}
        if service == "nmt":
            return {"text": text[::-1], "target": str(payload.get("target", "xx"))}
        return {"audio_ms": 60 * len(text), "sample_rate": 16_000}

    handle.__name__ = f"demo_{service}"
    return handle


def build_agent(
    url: str,
    token: str,
    *,
    services: Sequence[str] = SERVICES,
    features: Sequence[str] = (),
    max_jobs: int = 2,
    region: str | None = None,
    sleep_ms: int = 200,
    **options: Any,
) -> NodeAgent:
    """A ``NodeAgent`` serving fake ``services``; ``options`` go to ``NodeAgent``."""
    handlers = {service: fake_handler(service, sleep_ms) for service in services}
    return NodeAgent(
        url,
        token,
        services=list(services),
        features=list(features),
        max_jobs=max_jobs,
        region=region,
        handlers=handlers,
        **options,
    )


async def _main(args: argparse.Namespace, token: str) -> int:
    agent = build_agent(
        args.url,
        token,
        services=args.services,
        features=args.features,
        max_jobs=args.max_jobs,
        region=args.region,
        sleep_ms=args.sleep_ms,
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    runner = asyncio.create_task(agent.run())
    stop_requested = asyncio.create_task(stopping.wait())
    await asyncio.wait({runner, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    if stopping.is_set():
        logger.info("stopping: draining for up to %.0f s", args.grace_s)
        await agent.stop(grace_s=args.grace_s)
    stop_requested.cancel()
    try:
        await runner
    except Unauthorized as exc:
        logger.error("%s", exc)
        return 2
    except Replaced as exc:
        logger.error("%s", exc)
        return 3
    logger.info("stopped; %s", agent.stats)
    return 0


def _number(value: object, default: int) -> float:
    return float(value) if isinstance(value, int | float) and value >= 0 else float(default)


def _csv(text: str) -> list[str]:
    return [item for item in (part.strip() for part in text.split(",")) if item]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scheduler_sdk.demo_node",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="ws://host:port/ws/node/")
    parser.add_argument("--token", help="node token (default: $SCHEDULER_NODE_TOKEN)")
    parser.add_argument("--services", type=_csv, default=list(SERVICES), help="asr,nmt,tts")
    parser.add_argument("--features", type=_csv, default=[], help="comma-separated")
    parser.add_argument("--max-jobs", type=int, default=2)
    parser.add_argument("--region")
    parser.add_argument("--sleep-ms", type=int, default=200, help="default job duration")
    parser.add_argument("--grace-s", type=float, default=10.0, help="drain time on SIGTERM")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("SCHEDULER_NODE_TOKEN")
    if not token:
        parser.error("give --token or set SCHEDULER_NODE_TOKEN")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    return asyncio.run(_main(args, token))


if __name__ == "__main__":
    sys.exit(main())
