"""``manage.py simulate``: simulated nodes and sessions against a running scheduler.

It creates (or re-keys) its own node records and API key, runs ``scheduler_sdk.simulator``,
prints progress to stderr and the summary to stdout, and fails when the scheduler was seen to
break a promise. The checks themselves live in the simulator; this is only the interface.

``--fault <name>`` injects one fault during the run (docs/faults.md): the Redis and process
faults of ``hotstate.faults`` against the cluster of ``REDIS_CLUSTER_URL`` and the daphnes
listening on ``--url``'s port (both must run on this machine), or the simulator's own
``flap-node`` and ``mna-storm``. The summary then says how the run came through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import SchedulerError
from hotstate import faults
from nodes.models import Node
from nodes.services import node_create, node_token_issue
from scheduler_sdk.backoff import Backoff
from scheduler_sdk.simulator import DISTRIBUTIONS, SimConfig, SimulationError, Simulator, Summary
from scheduler_sdk.simulator.faults import (
    FLAP_NODE,
    MNA_STORM,
    FaultAction,
    ScheduledFault,
    no_storm,
    storm_nodes_for,
)
from scheduler_sdk.simulator.storm import StormProcess
from sessions.models import ApiKey
from sessions.services import api_key_create, api_key_issue

SIM_TENANT = "sim"
DEFAULT_JOBS = 200
FAULT_NAMES = (*faults.FAULTS, FLAP_NODE, MNA_STORM)
DEFAULT_FAULT_FOR_S = {faults.PAUSE_PRIMARIES: 5.0, faults.FREEZE_CLUSTER: 10.0, MNA_STORM: 10.0}
# A flapping node comes straight back, so 50 flaps fit in a short run.
FLAP_BACKOFF = Backoff(initial_s=0.05, max_s=1.0)


def simulation_credentials(*, prefix: str, nodes: int) -> tuple[list[str], str]:
    """Fresh tokens for the nodes ``<prefix>-node-1..N`` and a fresh key of tenant ``sim``.

    Records left by an earlier run are reused with new secrets, so repeated runs keep the same
    ``node_id``s instead of piling up nodes; the old secrets stop working.
    """
    tokens = node_tokens([f"{prefix}-node-{number}" for number in range(1, nodes + 1)])
    key_name = f"{prefix} simulated sessions"
    api_key = ApiKey.objects.filter(tenant=SIM_TENANT, name=key_name).first()
    if api_key is None:
        _, key = api_key_create(tenant=SIM_TENANT, name=key_name)
    else:
        key = api_key_issue(api_key=api_key)
    return tokens, key


def node_tokens(names: Sequence[str]) -> list[str]:
    """Fresh tokens for the nodes ``names``, made or re-keyed (see ``simulation_credentials``)."""
    tokens = []
    for name in names:
        node = Node.objects.filter(name=name).first()
        if node is None:
            _, token = node_create(name=name)
        else:
            token = node_token_issue(node=node)
        tokens.append(token)
    return tokens


def websocket_base(url: str) -> str:
    """``ws(s)://host:port`` for an ``http(s)://`` or ``ws(s)://`` URL (its path is dropped)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise CommandError(f"--url must be an http(s):// or ws(s):// URL, not {url!r}")
    netloc = parts.netloc
    if parts.hostname in {"0.0.0.0", "::"}:  # a listen-everywhere address: connect locally
        netloc = netloc.replace(
            parts.hostname, "127.0.0.1" if ":" not in parts.hostname else "[::1]"
        )
    return urlunsplit((scheme, netloc, "", "", ""))


def _port(url: str) -> int:
    parts = urlsplit(websocket_base(url))
    return parts.port or (443 if parts.scheme == "wss" else 80)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item for item in (part.strip() for part in text.split(",")) if item)


class Command(BaseCommand):
    help = (
        "Run simulated nodes and sessions against a running scheduler, show progress, print a "
        "summary (jobs, throughput, latency) and fail if an invariant violation was seen."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url",
            default=f"http://{settings.HOST}:{settings.PORT}",
            help="the scheduler (http://, https://, ws:// or wss://); default http://$HOST:$PORT",
        )
        parser.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
        parser.add_argument(
            "--sessions", type=int, default=2, help="simulated sessions (default 2)"
        )
        parser.add_argument(
            "--jobs",
            type=int,
            help=f"total jobs to submit (default {DEFAULT_JOBS}, or unlimited with --duration)",
        )
        parser.add_argument("--duration", type=float, help="seconds to keep submitting")
        parser.add_argument(
            "--forever",
            action="store_true",
            help="keep submitting until Ctrl-C (a second Ctrl-C stops waiting for running jobs)",
        )
        parser.add_argument(
            "--rate",
            type=float,
            default=0.0,
            help="submits/s per session; 0 (default) submits as fast as the nodes' slots allow",
        )
        parser.add_argument("--services", type=_csv, default=("asr", "nmt", "tts"))
        parser.add_argument("--max-jobs", type=int, default=4, help="per node (default 4)")
        parser.add_argument("--job-ms", type=float, default=200.0, help="mean job duration")
        parser.add_argument("--job-dist", choices=DISTRIBUTIONS, default="uniform")
        parser.add_argument("--fail-rate", type=float, default=0.0, help="0..1")
        parser.add_argument("--mna-rate", type=float, default=0.0, help="0..1: model_not_available")
        parser.add_argument(
            "--duplicate-rate", type=float, default=0.0, help="0..1: request ids submitted again"
        )
        parser.add_argument(
            "--frame-budget",
            type=float,
            default=40.0,
            help="frames/s each simulated peer stays under (the scheduler's limit is 50); 0: off",
        )
        parser.add_argument("--job-timeout-ms", type=int, default=30_000)
        parser.add_argument(
            "--connect-timeout", type=float, default=10.0, help="seconds to reach the scheduler"
        )
        parser.add_argument("--grace", type=float, default=10.0, help="seconds past job timeouts")
        parser.add_argument("--seed", type=int)
        parser.add_argument(
            "--prefix", default="sim", help="node names are <prefix>-node-<n> (default sim)"
        )
        parser.add_argument(
            "--every", type=float, default=2.0, help="seconds between progress lines"
        )
        parser.add_argument("--quiet", action="store_true", help="no progress lines")
        parser.add_argument(
            "--fault",
            choices=FAULT_NAMES,
            help="inject this fault during the run (docs/faults.md)",
        )
        parser.add_argument(
            "--fault-at", type=float, default=5.0, help="seconds after the first submit (5)"
        )
        parser.add_argument(
            "--fault-for",
            type=float,
            help="pause-primaries: seconds per primary (5); freeze-cluster: seconds (10); "
            "mna-storm: seconds (10)",
        )
        parser.add_argument(
            "--after-fault",
            type=float,
            default=12.0,
            help="seconds to keep submitting after the fault ends (12)",
        )
        parser.add_argument("--flaps", type=int, default=50, help="flap-node: drops (50)")
        parser.add_argument(
            "--storm-rate",
            type=float,
            default=1000.0,
            help="mna-storm: reports/s (1000), sent from a process of its own; 0: none sent, "
            "the baseline over the same window",
        )
        parser.add_argument("--json", type=Path, help="also write the summary to this file")

    def handle(self, *args: Any, **options: Any) -> None:
        config = self._config(options)
        url = websocket_base(options["url"])
        if options["nodes"] < 0 or options["sessions"] < 1:
            raise CommandError("--nodes must be 0 or more and --sessions at least 1")
        try:
            tokens, key = simulation_credentials(prefix=options["prefix"], nodes=options["nodes"])
        except SchedulerError as exc:
            raise CommandError(exc.message) from exc
        if options["verbosity"] < 2:
            # The SDK logs every connect and disconnect; the progress line says enough.
            logging.getLogger("scheduler_sdk").setLevel(logging.WARNING)
        fault = options["fault"]
        simulator = Simulator(
            url,
            tokens,
            [key] * options["sessions"],
            config,
            agent_options={"backoff": FLAP_BACKOFF} if fault == FLAP_NODE else None,
        )
        storm = self._storm_process(simulator, options) if fault == MNA_STORM else None
        if fault:
            simulator.fault = ScheduledFault(fault, self._fault_action(simulator, storm, options))
        if not options["quiet"]:
            self.stderr.write(
                f"Simulating {options['nodes']} node(s) and {options['sessions']} session(s) "
                f"against {url}" + (" until Ctrl-C" if config.forever else "") + "."
            )
        try:
            summary = asyncio.run(
                self._run(simulator, storm, every=options["every"], quiet=options["quiet"])
            )
        except SimulationError as exc:
            raise CommandError(
                f"{exc} (is the scheduler running? scripts/run.sh starts it)"
            ) from exc
        self.stdout.write(summary.render())
        if options["json"] is not None:
            options["json"].write_text(json.dumps(summary.as_dict(), indent=1))
        if not summary.ok:
            raise CommandError(
                f"{len(summary.violations)} invariant violation(s) and "
                f"{len(summary.problems)} problem(s) seen"
            )

    def _storm_process(self, simulator: Simulator, options: dict[str, Any]) -> StormProcess | None:
        """The ``mna-storm`` nodes, ``<prefix>-storm-1..N``, in a process of their own (none at
        ``--storm-rate 0``, the baseline)."""
        rate = options["storm_rate"]
        if rate <= 0:
            return None
        count = storm_nodes_for(rate)
        names = [f"{options['prefix']}-storm-{n}" for n in range(1, count + 1)]
        return StormProcess(
            simulator.node_url,
            node_tokens(names),
            service=simulator.config.storm_service,
            connect_timeout_s=simulator.config.connect_timeout_s,
        )

    def _fault_action(
        self, simulator: Simulator, storm: StormProcess | None, options: dict[str, Any]
    ) -> FaultAction:
        """What ``--fault`` does; the blocking faults of ``hotstate.faults`` run in a thread."""
        name = options["fault"]
        seconds = options["fault_for"] or DEFAULT_FAULT_FOR_S.get(name, 0.0)
        if name == FLAP_NODE:
            return functools.partial(simulator.flap_node, times=options["flaps"])
        if name == MNA_STORM:
            if storm is None:
                return functools.partial(no_storm, seconds)
            return functools.partial(storm.storm, rate=options["storm_rate"], seconds=seconds)
        redis_url = settings.REDIS_CLUSTER_URL
        blocking = {
            faults.KILL_INSTANCE: functools.partial(faults.kill_instance, _port(options["url"])),
            faults.KILL_PRIMARY: functools.partial(faults.kill_primary, redis_url),
            faults.PAUSE_PRIMARIES: functools.partial(
                faults.pause_primaries, redis_url, each_s=seconds
            ),
            faults.FREEZE_CLUSTER: functools.partial(
                faults.freeze_cluster, redis_url, seconds=seconds
            ),
        }[name]
        return functools.partial(asyncio.to_thread, blocking)

    def _config(self, options: dict[str, Any]) -> SimConfig:
        jobs, duration = options["jobs"], options["duration"]
        if options["forever"]:
            if jobs is not None or duration is not None:
                raise CommandError("--forever runs until Ctrl-C: leave out --jobs and --duration")
        elif jobs is None and duration is None:
            jobs = DEFAULT_JOBS
        try:
            return SimConfig(
                services=options["services"],
                max_jobs=options["max_jobs"],
                jobs=jobs,
                duration_s=duration,
                rate=options["rate"],
                job_ms=options["job_ms"],
                job_ms_distribution=options["job_dist"],
                fail_rate=options["fail_rate"],
                mna_rate=options["mna_rate"],
                duplicate_rate=options["duplicate_rate"],
                frame_budget=options["frame_budget"],
                job_timeout_ms=options["job_timeout_ms"],
                grace_s=options["grace"],
                connect_timeout_s=options["connect_timeout"],
                seed=options["seed"],
                fault_at_s=options["fault_at"],
                after_fault_s=options["after_fault"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

    async def _run(
        self, simulator: Simulator, storm: StormProcess | None, *, every: float, quiet: bool
    ) -> Summary:
        """The simulation, with Ctrl-C to stop it and a progress line every ``every`` s; the
        storm's nodes (if any) are registered before the run's own connect, and stopped after
        it."""
        loop = asyncio.get_running_loop()
        interrupts = 0

        def interrupted() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                self.stderr.write("Stopping: waiting for running jobs (Ctrl-C again to abort).")
                simulator.stop()
            else:
                simulator.stop(abort=True)

        handled = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, interrupted)
            handled = True
        ticker = None if quiet else asyncio.create_task(self._tick(simulator, every))
        try:
            if storm is not None:
                await storm.start()
            return await simulator.run()
        finally:
            if storm is not None:
                await storm.stop()
            if ticker is not None:
                ticker.cancel()
            if handled:
                loop.remove_signal_handler(signal.SIGINT)

    async def _tick(self, simulator: Simulator, every: float) -> None:
        while True:
            await asyncio.sleep(max(every, 0.1))
            self.stderr.write(simulator.progress_line())
