"""Reconnect delays: exponential, capped, with jitter so that peers do not reconnect in step."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` after ``n`` failed attempts in a row: ``initial_s * factor**n``, jittered.

    The jitter multiplies by a uniform factor in ``[1 - jitter, 1 + jitter]``; the cap applies
    after it, so every delay is at most ``max_s``. When an instance stops (close 1012) all of its
    peers reconnect at once; the jitter spreads them out.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s and self.factor >= 1 and 0 <= self.jitter < 1):
            raise ValueError(f"invalid backoff {self!r}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        base = self.initial_s * self.factor ** min(failures, 64)
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.max_s, min(base, self.max_s) * spread)
