"""Python SDK for the scheduler's WebSocket protocol: nodes (``NodeAgent``) and sessions
(``SessionClient``). No Django; it depends only on ``protocol``, ``websockets`` and ``psutil``.

See docs/node-sdk.md. ``python -m scheduler_sdk.demo_node`` runs a node with fake services.
"""

from __future__ import annotations

from scheduler_sdk.backoff import Backoff
from scheduler_sdk.errors import Replaced, RequestFailed, SdkError, Unauthorized
from scheduler_sdk.node import (
    Handler,
    Job,
    JobFailed,
    ModelNotAvailable,
    NodeAgent,
    NodeStats,
    Violation,
)
from scheduler_sdk.session import SessionClient, SessionClosed, SessionEvent, SessionStats
from scheduler_sdk.version import __version__

__all__ = [
    "Backoff",
    "Handler",
    "Job",
    "JobFailed",
    "ModelNotAvailable",
    "NodeAgent",
    "NodeStats",
    "Replaced",
    "RequestFailed",
    "SdkError",
    "SessionClient",
    "SessionClosed",
    "SessionEvent",
    "SessionStats",
    "Unauthorized",
    "Violation",
    "__version__",
]
