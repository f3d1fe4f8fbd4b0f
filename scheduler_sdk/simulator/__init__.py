"""Drive a running scheduler with simulated nodes and sessions, and check what it promises.

No Django: it takes node tokens, API keys and the scheduler's base URL (``ws://host:port``),
so it runs against any deployment. ``manage.py simulate`` creates the credentials and runs it.

1. Connect every node (a ``NodeAgent`` whose handlers sleep, fail with ``fail_rate`` or raise
   ``ModelNotAvailable`` with ``mna_rate``) and every session (a ``SessionClient``). A refused
   credential or an unreachable scheduler ends the run before it starts (``SimulationError``).
2. Each session submits jobs: ``rate`` per second, or (``rate`` 0) as fast as the system takes
   them, keeping at most its share of all nodes' slots in flight. Either way no peer is pushed
   past ``frame_budget`` frames per second, so the scheduler's rate limit never drops a frame.
3. A ``duplicate_rate`` share of the accepted requests is submitted again later, from a random
   session of the same tenant, to exercise idempotency.
4. Submitting ends after ``jobs`` submits, after ``duration_s``, or on ``stop()``. Jobs still
   running then get until their timeout plus ``grace_s`` to finish, and every session
   ``settle_s`` more, so that a late second copy of a result is still seen.
5. The ``Summary`` counts everything and lists each broken promise (``SimViolation``): a node
   asked to hold more than ``max_jobs``, one job attempt dispatched to two nodes, a result
   delivered twice or never, a result for another request, a repeated ``request_id`` that got a
   different job (or was refused), a submit that got no reply.

``config`` holds ``SimConfig``; ``run`` the ``Simulator`` and its phases; ``traffic`` the
sessions' submits and their pacing; ``nodes`` the simulated nodes; ``ledger`` the books of a
run and the promises checked on them; ``report`` the ``Summary``.
"""

from __future__ import annotations

from scheduler_sdk.simulator.config import DISTRIBUTIONS, SimConfig, SimulationError
from scheduler_sdk.simulator.nodes import SIM_FAILED
from scheduler_sdk.simulator.report import Summary, percentile
from scheduler_sdk.simulator.run import Simulator

__all__ = [
    "DISTRIBUTIONS",
    "SIM_FAILED",
    "SimConfig",
    "SimulationError",
    "Simulator",
    "Summary",
    "percentile",
]
