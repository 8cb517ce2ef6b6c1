"""The throttled MX's token bucket and gate, on an injected clock (no network)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.devstack.servers.throttled_mx import (
    RateGate,
    SecondCount,
    TokenBucket,
    rate_limited_reply,
)
from quiver.smtp.reader import ReplyReader
from quiver.smtp.reply import parse_reply


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_full_bucket_passes_its_burst_then_refuses() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, clock=clock)  # burst: 0.25 s of 20/s = 5
    assert [bucket.take() for _ in range(7)] == [True] * 5 + [False] * 2


def test_the_bucket_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, clock=clock)
    while bucket.take():
        pass
    clock.advance(0.05)  # one token's worth at 20/s
    assert bucket.take() is True
    assert bucket.take() is False
    clock.advance(10)  # never more than the burst
    assert sum(bucket.take() for _ in range(20)) == 5


def test_a_paced_sender_at_the_rate_is_never_refused() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, clock=clock)
    taken = []
    for _ in range(200):
        clock.advance(1 / 20)
        taken.append(bucket.take())
    assert all(taken)


def test_over_many_seconds_a_flood_passes_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, clock=clock)
    passed = 0
    for _ in range(10 * 100):  # 100 a second for 10 s
        clock.advance(0.01)
        passed += bucket.take()
    assert 200 <= passed <= 200 + 5


def test_a_tiny_rate_still_holds_one_message() -> None:
    bucket = TokenBucket(rate=0.5, clock=Clock())
    assert bucket.burst == 1.0
    assert bucket.take() is True
    assert bucket.take() is False


def test_set_rate_changes_the_refill_and_keeps_earned_tokens() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, clock=clock)
    while bucket.take():
        pass
    bucket.set_rate(40)
    clock.advance(0.025)  # one token at 40/s, half of one at 20/s
    assert bucket.take() is True
    assert bucket.burst == 10.0


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_a_rate_that_is_not_positive_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate=rate, clock=Clock())
    with pytest.raises(ValueError, match="positive"):
        RateGate(rate=rate, clock=Clock())


def test_a_clock_that_steps_back_refills_nothing() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, clock=clock)
    while bucket.take():
        pass
    clock.advance(-5)
    assert bucket.take() is False


@given(steps=st.lists(st.floats(min_value=0, max_value=2, allow_nan=False), max_size=200),
       rate=st.floats(min_value=0.1, max_value=1000))
def test_never_more_than_burst_plus_rate_times_elapsed(steps: list[float], rate: float) -> None:
    clock = Clock()
    bucket = TokenBucket(rate=rate, clock=clock)
    passed = 0
    for step in steps:
        clock.advance(step)
        passed += bucket.take()
    assert passed <= bucket.burst + rate * sum(steps) + 1e-6


def test_the_gate_keeps_one_bucket_per_client_ip() -> None:
    clock = Clock()
    gate = RateGate(rate=4, clock=clock)  # burst 1
    assert gate("127.0.0.2") is None
    assert gate("127.0.0.3") is None
    refusal = gate("127.0.0.2")
    assert refusal is not None and "127.0.0.2" in refusal


def test_the_gate_counts_per_second_of_its_clock() -> None:
    clock = Clock(1000.0)
    gate = RateGate(rate=4, clock=clock)
    gate("127.0.0.2")
    gate("127.0.0.2")
    clock.advance(1.0)
    gate("127.0.0.2")
    assert gate.counts() == [SecondCount(1000, 1, 1), SecondCount(1001, 1, 0)]
    assert gate.counts(since=1001.5) == [SecondCount(1001, 1, 0)]


def test_the_gate_set_rate_reaches_existing_and_new_clients() -> None:
    clock = Clock()
    gate = RateGate(rate=4, clock=clock)
    gate("127.0.0.2")
    gate.set_rate(40)
    assert gate.rate == 40
    clock.advance(1.0)
    assert sum(gate("127.0.0.2") is None for _ in range(12)) == 10
    assert sum(gate("127.0.0.9") is None for _ in range(12)) == 10


def test_the_refusal_is_gmails_multiline_421_4_7_28() -> None:
    [raw] = ReplyReader().feed(rate_limited_reply("127.0.0.4").encode() + b"\r\n")
    reply = parse_reply(*raw)
    assert reply.code == 421
    assert reply.enhanced == "4.7.28"
    assert "unusual rate of unsolicited mail" in reply.text
    assert "UnsolicitedRateLimitError" in reply.text
