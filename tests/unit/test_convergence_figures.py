"""Convergence figures over per-second accepted/refused counts (pure maths)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.devstack.convergence_figures import (
    Second,
    median_of,
    per_second,
    phase_figures,
    rolling_rates,
    seconds_to_converge,
)


def run(*accepted: int, refused: int = 0) -> list[Second]:
    return [Second(a, refused) for a in accepted]


def test_rolling_rates_are_means_over_full_windows() -> None:
    assert rolling_rates(run(1, 2, 3, 4), 2) == [1.5, 2.5, 3.5]
    assert rolling_rates(run(1, 2), 3) == []
    with pytest.raises(ValueError, match="at least 1"):
        rolling_rates(run(1), 0)


def test_a_sender_that_starts_too_fast_and_settles_on_r() -> None:
    # 10 s far over R=20 (refused), then 20/s for 20 s.
    seconds = run(*[60] * 10) + run(*[20] * 20)
    assert seconds_to_converge(seconds, rate=20, window=5) == 15


def test_the_end_of_the_first_good_window_is_the_convergence_time() -> None:
    seconds = run(0, 0, 0, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20)
    # Windows of 3: [0,0,0] .. [0,20,20]=13.3 (out), [20,20,20] from second 3 → ends at 6.
    assert seconds_to_converge(seconds, rate=20, window=3, min_settled=1) == 6


def test_leaving_the_band_later_resets_convergence() -> None:
    seconds = run(*[20] * 10, *[5] * 5, *[20] * 10)
    assert seconds_to_converge(seconds, rate=20, window=3, min_settled=1) == 18


def test_never_within_the_band() -> None:
    figures = phase_figures(run(*[11] * 30, refused=20), rate=20)
    assert figures.seconds_to_converge is None
    assert not figures.converged
    # Measured over the last half instead: the sender tried 31/s and got 11/s through.
    assert figures.settled_from == 15
    assert figures.converged_rate == 31.0
    assert figures.accepted_rate == 11.0
    assert figures.deferred_share_after == pytest.approx(20 / 31)


def test_a_sender_far_over_the_rate_is_not_converged_by_what_got_through() -> None:
    # The receiver accepts R whatever it is offered: the attempts are what converge.
    figures = phase_figures(run(*[20] * 30, refused=25), rate=20)
    assert figures.seconds_to_converge is None
    assert figures.accepted_rate == 20.0


def test_converging_in_the_last_seconds_is_not_enough() -> None:
    seconds = run(*[60] * 20, *[20] * 7)
    assert seconds_to_converge(seconds, rate=20, window=5, min_settled=5) is None
    assert seconds_to_converge(seconds, rate=20, window=5, min_settled=2) == 25


def test_figures_after_convergence() -> None:
    seconds = [Second(60, 40)] * 10 + [Second(19, 1)] * 10 + [Second(21, 0)] * 11
    figures = phase_figures(seconds, rate=20, window=5)
    assert figures.seconds_to_converge == 15
    assert figures.converged_rate == 21.0  # the median of five 19s and eleven 21s
    assert figures.deferred_share_after == pytest.approx(5 / (5 * 20 + 11 * 21))
    assert (figures.accepted, figures.refused) == (600 + 190 + 231, 400 + 10)
    assert figures.as_dict()["converged"] is True


def test_an_empty_phase_has_no_figures() -> None:
    figures = phase_figures([], rate=20)
    assert (figures.seconds_to_converge, figures.converged_rate,
            figures.deferred_share_after) == (None, None, None)


def test_a_rate_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        seconds_to_converge(run(1), rate=0)


def test_per_second_fills_quiet_seconds_with_zero() -> None:
    rows = [(100, 3, 1), (102, 5, 0), (99, 9, 9)]
    assert per_second(rows, start=100, end=104) == [
        Second(3, 1), Second(0, 0), Second(5, 0), Second(0, 0)]


def test_median_of_skips_missing_values() -> None:
    assert median_of([21, None, 17, 30]) == 21.0
    assert median_of([None]) is None


@given(accepted=st.lists(st.integers(min_value=0, max_value=200), max_size=120),
       rate=st.floats(min_value=0.5, max_value=100),
       window=st.integers(min_value=1, max_value=10))
def test_after_convergence_every_window_is_in_the_band(accepted: list[int], rate: float,
                                                        window: int) -> None:
    seconds = run(*accepted)
    at = seconds_to_converge(seconds, rate=rate, window=window, min_settled=1)
    if at is None:
        return
    assert window <= at < len(seconds)
    rates = rolling_rates(seconds, window)
    assert all(rate * 0.8 <= r <= rate * 1.2 for r in rates[at - window:])
    # and the window just before it was out of the band (or there was none)
    if at - window - 1 >= 0:
        assert not rate * 0.8 <= rates[at - window - 1] <= rate * 1.2
