"""Fixtures of the end-to-end tests (``tests/e2e/harness`` describes the systems they start).

A module's tests share one ``e2e_system``: a real daphne that is a whole scheduler, with a
database and a hot state of its own. A module sets ``E2E_ENV = {...}`` to change settings of its
scheduler (small limits and timeouts); without it the scheduler runs with the defaults, as
``scripts/run.sh`` starts it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness.deployment import System
from tests.e2e.harness.peers import Peers


@pytest.fixture(scope="module")
def e2e_system(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_cluster_url: str,
    e2e_template_db: Path,
) -> Iterator[System]:
    """A real daphne for this module; stopped, and its keys deleted, however its tests end."""
    system = System(
        tmp_path_factory.mktemp("e2e"),
        redis_cluster_url,
        e2e_template_db,
        extra_env=getattr(request.module, "E2E_ENV", {}),
    )
    try:
        system.start_instances("scheduler")
        yield system
    finally:
        system.close()


@pytest.fixture(scope="module")
def api_key(e2e_system: System) -> str:
    """An API key of the tenant ``acme`` on the module's system."""
    return e2e_system.api_key("acme")


@pytest.fixture
def service() -> str:
    """A service of the test's own, so that no earlier test's node can take its jobs."""
    return f"svc-{secrets.token_hex(4)}"


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    """Whatever the test connects, closed after it even when it fails."""
    tracked = Peers()
    try:
        yield tracked
    finally:
        await tracked.close()
