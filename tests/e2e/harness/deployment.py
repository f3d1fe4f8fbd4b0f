"""The systems the end-to-end tests run: real scheduler processes with a database and a hot
state of their own, reached only over loopback WebSockets and HTTP.

A ``Deployment`` is what DESIGN.md "Processes" describes: daphne instances (and ``manage.py``
processes such as ``serve``) that only meet in Redis Cluster and in the SQL database. What its
processes share, through their environment:

- ``DATABASE_URL``: one SQLite file in the test's temporary folder, copied from a migrated
  template and given credentials by the real ``manage.py`` commands. It is SQLite even when CI
  points the outer suite's ``DATABASE_URL`` at PostgreSQL: pytest-django's test database is
  invisible to subprocesses, and these processes' durable records are their own, so the e2e
  tests neither depend on nor touch the outer database.
- ``HOTSTATE_PREFIX`` and ``CHANNEL_LAYER_PREFIX``: random per deployment, so no other test or
  running server sees its nodes or its inboxes; every key under both is deleted by ``close()``.
- ``CHANNEL_LAYER``: ``cluster`` (Redis Streams between instances), or ``memory`` for a
  ``System``, a deployment of one instance that is a whole scheduler, as ``scripts/run.sh``
  starts it.
- ``REDIS_CLUSTER_URL`` from the ``redis_cluster_url`` fixture (the cluster is already up).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.harness.processes import (
    ROOT,
    Instance,
    kill_tree,
    loopback_env,
    manage,
    start_instances,
    tail,
)
from tests.support.keys import delete_keys_sync

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


def database_env(folder: Path, db: Path) -> dict[str, str]:
    return loopback_env(
        {
            **os.environ,
            # Never the outer suite's DATABASE_URL (PostgreSQL in CI): see the module docstring.
            "DATABASE_URL": f"sqlite:///{db}",
            "SCHEDULER_VAR_DIR": str(folder),
        }
    )


def migrated_database(folder: Path) -> Path:
    """A migrated SQLite file in ``folder``, for deployments to copy."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "template.sqlite3"
    manage(database_env(folder, db), "migrate", "--noinput", "-v0")
    return db


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy even while other processes use ``source`` (SQLite's backup API)."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def unique_prefix(kind: str) -> str:
    # Letters, digits and '-' only: valid for both the hot state and the channel layer.
    return f"e2e-{kind}-{secrets.token_hex(5)}"


@dataclass(frozen=True)
class Credentials:
    node_tokens: tuple[str, ...]
    api_keys: dict[str, str]  # tenant -> key


@dataclass
class Deployment:
    """Processes sharing one database file, one hot-state prefix and one channel-layer prefix.

    ``template`` is a database to start from: a migrated one, or another deployment's ``db``
    to share its credentials.
    """

    folder: Path
    redis_url: str
    template: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    layer: str = "cluster"
    hot_prefix: str = field(default_factory=lambda: unique_prefix("hot"))
    layer_prefix: str = field(default_factory=lambda: unique_prefix("layer"))
    instances: list[Instance] = field(default_factory=list, init=False)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    _tokens: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = self.folder / "db.sqlite3"
        copy_database(self.template, self.db)
        self.env = {
            **database_env(self.folder, self.db),
            "REDIS_CLUSTER_URL": self.redis_url,
            "HOTSTATE_PREFIX": self.hot_prefix,
            "CHANNEL_LAYER": self.layer,
            "CHANNEL_LAYER_PREFIX": self.layer_prefix,
            "LOG_LEVEL": "INFO",
            **self.extra_env,
        }

    # --- processes ------------------------------------------------------------------------------

    def start_instances(self, *names: str, role: str = "all", ready: bool = True) -> list[Instance]:
        """Start one daphne per name (on free ports, all at once) and wait until each is ready
        (see ``processes.start_instances``)."""
        env = {**self.env, "SCHEDULER_ROLE": role}
        started = start_instances(self.folder, env, *names, ready=ready)
        self.instances += started
        return started

    def popen(
        self, *args: str, log_name: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """A ``manage.py`` subprocess of this deployment, stopped by ``close()``."""
        log_path = self.folder / f"{log_name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.others.append(process)
        return process, log_path

    def manage(self, *args: str) -> str:
        """Run ``manage.py`` against this deployment's database; its stdout."""
        return manage(self.env, *args)

    def logs(self) -> str:
        return "\n".join(
            f"--- {instance.name} (pid {instance.pid}, {instance.instance_id}) ---\n"
            + tail(instance.log_path, 40)
            for instance in self.instances
        )

    def close(self) -> int:
        """Stop every process (SIGTERM, then SIGKILL) and delete the deployment's keys."""
        for instance in self.instances:
            if instance.process.poll() is None:
                instance.process.terminate()  # all drain at once; stop() waits for each
        for process in self.others:
            kill_tree(process.pid)
        for instance in self.instances:
            instance.stop()
        return delete_keys_sync(self.redis_url, self.hot_prefix, self.layer_prefix)

    # --- credentials ----------------------------------------------------------------------------

    def credentials(self, *, nodes: int = 0, tenants: Iterable[str] = ()) -> Credentials:
        """``nodes`` new node tokens and an API key per tenant, made in this deployment's
        database by the real commands (``create_node_token``, ``create_api_key``) in one
        Django start-up."""
        tenants = list(tenants)
        commands = [["create_node_token", f"e2e-node-{secrets.token_hex(4)}"] for _ in range(nodes)]
        commands += [["create_api_key", tenant] for tenant in tenants]
        script = _CREDENTIALS_SCRIPT.format(commands=json.dumps(commands))
        out = self.manage("shell", "-v0", "-c", script)
        found = out.strip().splitlines()
        assert len(found) == len(commands), out
        return Credentials(
            node_tokens=tuple(found[:nodes]),
            api_keys=dict(zip(tenants, found[nodes:], strict=True)),
        )

    def node_tokens(self, count: int) -> list[str]:
        """Tokens of ``count`` new node records, each never used before (made a batch at a
        time: a Django start-up costs a second or more)."""
        if len(self._tokens) < count:
            self._tokens += self.credentials(nodes=max(count, TOKEN_BATCH)).node_tokens
        taken, self._tokens = self._tokens[:count], self._tokens[count:]
        return taken

    def api_key(self, tenant: str = "acme") -> str:
        """A new API key of ``tenant``."""
        return self.credentials(tenants=[tenant]).api_keys[tenant]


@dataclass
class System(Deployment):
    """A deployment of one instance with the in-memory channel layer: one process that is a
    whole scheduler, as ``scripts/run.sh`` starts it."""

    layer: str = "memory"

    @property
    def instance(self) -> Instance:
        (only,) = self.instances
        return only

    @property
    def url(self) -> str:
        return self.instance.url

    @property
    def ws(self) -> str:
        return self.instance.ws

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id
