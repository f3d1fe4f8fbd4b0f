from __future__ import annotations

import random

import pytest

from scheduler_sdk import Backoff


def test_delays_grow_exponentially_within_the_jitter_band_and_stop_at_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=8.0, factor=2.0, jitter=0.25)
    rng = random.Random(1)
    for failures, base in enumerate([0.5, 1, 2, 4, 8, 8, 8]):
        for _ in range(50):
            delay = backoff.delay(failures, rng)
            assert base * 0.75 <= delay <= min(8.0, base * 1.25)


def test_delays_are_jittered_not_in_step() -> None:
    backoff = Backoff(initial_s=1.0, max_s=30.0, jitter=0.5)
    rng = random.Random(2)
    delays = {round(backoff.delay(3, rng), 6) for _ in range(20)}
    assert len(delays) == 20


def test_huge_failure_counts_stay_capped() -> None:
    assert Backoff(max_s=30.0).delay(10_000) <= 30.0


@pytest.mark.parametrize(
    "options",
    [{"initial_s": 0}, {"initial_s": 5, "max_s": 1}, {"factor": 0.5}, {"jitter": 1.0}],
)
def test_nonsense_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(**options)
