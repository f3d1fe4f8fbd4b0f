from __future__ import annotations

from core.ratelimit import FrameLimiter, TokenBucket, Verdict


class FakeClock:
    """Time under the test's control (this is a clock, not a Redis stand-in)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refuses() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=50, burst=100, clock=clock)
    assert all(bucket.take() for _ in range(100))
    assert not bucket.take()


def test_bucket_refills_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=50, burst=100, clock=clock)
    for _ in range(100):
        bucket.take()
    clock.now += 0.1  # 5 tokens
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]


def test_limiter_disconnects_a_peer_over_its_limit_for_ten_seconds() -> None:
    clock = FakeClock()
    limiter = FrameLimiter.build(rate=50, burst=100, clock=clock)
    verdicts = [limiter.check() for _ in range(101)]
    assert verdicts[:100] == [Verdict.ALLOW] * 100
    assert verdicts[100] == Verdict.REFUSE
    # Twice the allowed rate for 10 more seconds: half the frames still pass, but it persists.
    seen = set()
    for _ in range(1100):
        clock.now += 0.01
        seen.add(limiter.check())
    assert seen == {Verdict.ALLOW, Verdict.REFUSE, Verdict.DISCONNECT}


def test_limiter_forgives_a_peer_that_calms_down() -> None:
    clock = FakeClock()
    limiter = FrameLimiter.build(rate=50, burst=100, clock=clock)
    for _ in range(101):
        limiter.check()
    clock.now += 2.0  # calm
    assert limiter.check() == Verdict.ALLOW
    clock.now += 9.0
    for _ in range(200):
        verdict = limiter.check()
    assert verdict == Verdict.REFUSE  # a new episode, not a disconnect
