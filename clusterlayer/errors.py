"""What can go wrong: the error a sender gets when a channel's process is gone, and the errors
that background loops (readers, heartbeat, full marks) wait out with a backoff.
"""

from __future__ import annotations

from channels.exceptions import ChannelFull
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

# Seconds a background loop waits after a failure: doubled on each failure up to the maximum.
RETRY_MIN = 0.05
RETRY_MAX = 2.0

# The cluster cannot answer now (down, failing over, unreachable); background loops retry.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    ClusterDownError,
    MasterDownError,
    TryAgainError,
    SlotNotCoveredError,
    RedisClusterException,
    OSError,
)


class ProcessGone(ChannelFull):  # type: ignore[misc]
    """The process that owns a process-local channel no longer heartbeats.

    A ``ChannelFull`` so that code written for any layer treats it as an undeliverable message;
    code that knows this layer can tell "that socket's process died" apart from back-pressure.
    """
