"""The one exception that callers see when Redis Cluster cannot answer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

# Failures that mean "the cluster is unreachable or mid-failover", as opposed to a bug in a
# command (ResponseError) that must not be hidden behind DEPENDENCY_DOWN.
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


class DependencyDown(Exception):
    """Redis Cluster is unreachable, timing out or failing over; callers answer DEPENDENCY_DOWN."""


@contextmanager
def dependency_guard(what: str) -> Iterator[None]:
    """Turn any cluster-unavailable error raised inside the block into ``DependencyDown``."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise DependencyDown(f"{what}: {type(exc).__name__}: {exc}") from exc
