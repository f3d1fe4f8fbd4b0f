"""The end-to-end system: a real daphne serving the project, with a database and hot state of
its own, reached only over loopback WebSockets and HTTP.

The database: pytest-django's test database is invisible to a subprocess (in-memory SQLite by
default), so e2e tests do not use it at all. Each module's scheduler gets its own SQLite file in
a temporary folder, migrated and given credentials by ``manage.py`` subprocesses with the
daphne's own environment. It stays SQLite even when the outer suite runs on PostgreSQL (CI sets
``DATABASE_URL=postgres://...``): the e2e scheduler's durable records are its own, so the e2e
tests neither depend on nor touch the outer database, and can run anywhere the cluster runs.

The hot state lives in the real local Redis Cluster under a ``HOTSTATE_PREFIX`` of the module's
own (no other test or running server sees its nodes), deleted after the module. The channel
layer is in-memory: one daphne is one whole scheduler instance.

A module sets ``E2E_ENV = {...}`` to change settings of its scheduler (small limits and
timeouts); without it the scheduler runs with the defaults, as ``scripts/run.sh`` starts it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, DaphneProcess, start_daphne, stop_daphne
from protocol import Resources
from scheduler_sdk import NodeAgent
from scheduler_sdk.backoff import Backoff
from tests.e2e.peers import RawPeer
from tests.support.keys import delete_keys_sync

MANAGE_TIMEOUT_S = 60
# Variables that would send the simulator's or a client's traffic through a proxy: the e2e
# system is on loopback and nothing may leave it.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")


def loopback_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.lower() not in PROXY_VARIABLES}


# Runs the real credential commands in one Django start-up, printing each secret (the last line
# a command prints) on a line of its own: a process per credential would cost a second each.
_CREDENTIALS_SCRIPT = """
import io, json
from django.core.management import call_command
for command in json.loads({commands!r}):
    out = io.StringIO()
    call_command(*command, stdout=out)
    print(out.getvalue().strip().splitlines()[-1])
"""
TOKEN_BATCH = 8


@dataclass
class System:
    """One scheduler process and the environment that reaches its database and hot state."""

    daphne: DaphneProcess
    env: dict[str, str]
    prefix: str
    _tokens: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.daphne.url

    @property
    def ws(self) -> str:
        """``ws://127.0.0.1:<port>``; the endpoints are ``/ws/node/`` and ``/ws/session/``."""
        return self.daphne.url.replace("http://", "ws://", 1)

    def log(self) -> str:
        return self.daphne.log()

    def manage(self, *args: str, timeout: float = MANAGE_TIMEOUT_S) -> str:
        """Run ``manage.py`` against this system's database; its stdout."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def node_tokens(self, count: int) -> list[str]:
        """Tokens of ``count`` new node records, each never used before (``create_node_token``
        for a batch at a time)."""
        if len(self._tokens) < count:
            names = [f"e2e-node-{secrets.token_hex(4)}" for _ in range(max(count, TOKEN_BATCH))]
            self._tokens += self.credentials([["create_node_token", name] for name in names])
        taken, self._tokens = self._tokens[:count], self._tokens[count:]
        return taken

    def api_key(self, tenant: str = "acme") -> str:
        """A new API key of ``tenant`` (``create_api_key``)."""
        return self.credentials([["create_api_key", tenant]])[0]

    def credentials(self, commands: list[list[str]]) -> list[str]:
        """The secret each credential command prints as its last line, in order."""
        script = _CREDENTIALS_SCRIPT.format(commands=json.dumps(commands))
        out = self.manage("shell", "-v0", "-c", script)
        secrets_ = out.strip().splitlines()
        assert len(secrets_) == len(commands), out
        return secrets_


@pytest.fixture(scope="session")
def e2e_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test run; each module's scheduler starts from a copy."""
    folder = tmp_path_factory.mktemp("e2e-template")
    db = folder / "db.sqlite3"
    env = loopback_env(
        {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{db}",
            "SCHEDULER_VAR_DIR": str(folder),
        }
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=MANAGE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"migrate failed: {done.stdout}{done.stderr}"
    return db


@pytest.fixture(scope="module")
def e2e_system(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_cluster_url: str,
    e2e_template_db: Path,
) -> Iterator[System]:
    """A real daphne for this module, with its own SQLite database and hot-state prefix.

    Stopped, and its hot-state keys deleted, however the module's tests end.
    """
    folder = tmp_path_factory.mktemp("e2e")
    db = folder / "db.sqlite3"
    shutil.copyfile(e2e_template_db, db)
    prefix = f"e2e-{secrets.token_hex(6)}"
    env = loopback_env(
        {
            **os.environ,
            # Not the outer suite's DATABASE_URL (PostgreSQL in CI): see the module docstring.
            "DATABASE_URL": f"sqlite:///{db}",
            "SCHEDULER_VAR_DIR": str(folder),
            "REDIS_CLUSTER_URL": redis_cluster_url,
            "HOTSTATE_PREFIX": prefix,
            "CHANNEL_LAYER": "memory",
            "LOG_LEVEL": "INFO",
            **getattr(request.module, "E2E_ENV", {}),
        }
    )
    daphne = start_daphne(folder, env)
    try:
        yield System(daphne=daphne, env=env, prefix=prefix)
    finally:
        stop_daphne(daphne)
        delete_keys_sync(redis_cluster_url, prefix)


class Peers:
    """Everything a test connects, closed after it even when it fails."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.raw: list[RawPeer] = []
        self.agents: list[NodeAgent] = []

    def track(self, peer: RawPeer) -> RawPeer:
        self.raw.append(peer)
        return peer

    async def agent(self, token: str, service: str, *, max_jobs: int, handler, **options):
        """An SDK node offering ``service``, registered; reports a light, fixed load so that
        selection never skips it for this machine's real CPU or memory figures."""
        agent = NodeAgent(
            f"{self.system.ws}/ws/node/",
            token,
            services=[service],
            max_jobs=max_jobs,
            handlers={service: handler},
            resources=lambda: Resources(cpu_pct=5.0, mem_pct=10.0),
            backoff=Backoff(initial_s=0.05, max_s=0.5),
            register_timeout_s=5.0,
            connect_kwargs={"proxy": None},
            **options,
        )
        self.agents.append(agent)
        await agent.start(timeout_s=10)
        return agent

    async def close(self) -> None:
        for peer in self.raw:
            await peer.close()
        for agent in self.agents:
            await agent.stop(grace_s=0)


@pytest.fixture
async def peers(e2e_system: System) -> AsyncIterator[Peers]:
    tracked = Peers(e2e_system)
    try:
        yield tracked
    finally:
        await tracked.close()
