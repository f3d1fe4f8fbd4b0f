"""Per-connection frame rate limiting (PROTOCOL.md, Framing: 50 frames/s, burst 100)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings

# How long a peer may stay over its limit after the first refusal before it is disconnected
# (PROTOCOL.md: 10 s). ``settings.RATE_LIMIT_PERSIST_S`` overrides it, read when a limiter is
# built, so tests can prove the 4429 close without waiting ten seconds.
PERSIST_LIMIT_S = 10.0
# A refusal-free stretch this long ends an over-limit episode.
CALM_S = 1.0


@dataclass
class TokenBucket:
    rate: float
    burst: int
    clock: object = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = self._now()

    def _now(self) -> float:
        assert callable(self.clock)
        return float(self.clock())

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._now()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Verdict:
    ALLOW = "allow"
    REFUSE = "refuse"
    DISCONNECT = "disconnect"


@dataclass
class FrameLimiter:
    """A token bucket plus the "persisting for 10 s more closes with 4429" rule."""

    bucket: TokenBucket
    persist_s: float = PERSIST_LIMIT_S
    episode_start: float | None = None
    last_refusal: float | None = None

    @classmethod
    def build(
        cls,
        *,
        rate: float,
        burst: int,
        persist_s: float | None = None,
        clock: object = time.monotonic,
    ) -> FrameLimiter:
        if persist_s is None:
            persist_s = float(getattr(settings, "RATE_LIMIT_PERSIST_S", PERSIST_LIMIT_S))
        return cls(bucket=TokenBucket(rate=rate, burst=burst, clock=clock), persist_s=persist_s)

    def check(self) -> str:
        now = self.bucket._now()
        if self.bucket.take():
            if self.last_refusal is not None and now - self.last_refusal >= CALM_S:
                self.episode_start = self.last_refusal = None
            return Verdict.ALLOW
        if self.episode_start is None:
            self.episode_start = now
        self.last_refusal = now
        if now - self.episode_start >= self.persist_s:
            return Verdict.DISCONNECT
        return Verdict.REFUSE
