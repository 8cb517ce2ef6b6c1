"""Durations, sizes and rates: what they mean, and that any input parses or is refused."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.units import Rate, parse_duration, parse_rate, parse_size

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
              "KB": 1000, "MB": 1000**2, "GB": 1000**3}
RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
SPACE = st.sampled_from(["", " ", "  ", "\t"])
# Numbers as an operator writes them: whole or with a decimal part, no exponent.
AMOUNT = st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False,
                     allow_infinity=False)
ANYTHING = st.one_of(
    st.text(max_size=30), st.none(), st.booleans(), st.integers(), st.floats(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
)


def written(amount: Decimal) -> str:
    return format(amount, "f")


@given(AMOUNT, st.sampled_from(sorted(DURATION_UNITS)), SPACE, SPACE, SPACE)
def test_a_duration_is_its_number_times_its_unit(amount: Decimal, unit: str, before: str,
                                                 between: str, after: str) -> None:
    seconds = parse_duration(f"{before}{written(amount)}{between}{unit}{after}")
    assert seconds == pytest.approx(float(amount) * DURATION_UNITS[unit], rel=1e-12)


@given(st.integers(0, 10**12) | st.floats(min_value=0, allow_infinity=False, allow_nan=False))
def test_a_plain_number_is_seconds(value: float) -> None:
    assert parse_duration(value) == float(value)


@given(ANYTHING)
def test_any_duration_input_is_a_finite_non_negative_number_or_refused(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        assert str(exc)  # says what was expected
        return
    assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, -1, "9" * 400 + "s",
                                   "-1s", "1e3s", "5 parsecs", "", "5", True])
def test_durations_that_cannot_be_used_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@given(st.integers(0, 10**6), st.sampled_from(sorted(SIZE_UNITS)), SPACE, SPACE)
def test_a_size_is_its_number_times_its_unit(amount: int, unit: str, before: str,
                                             between: str) -> None:
    text = f"{before}{amount}{between if unit else ''}{unit}"
    assert parse_size(text) == amount * SIZE_UNITS[unit]


@given(ANYTHING)
def test_any_size_input_is_a_whole_number_of_bytes_or_refused(value: object) -> None:
    try:
        size = parse_size(value)
    except ValueError:
        return
    assert isinstance(size, int) and not isinstance(size, bool) and size >= 0


@given(AMOUNT.filter(lambda a: a > 0), st.sampled_from(sorted(RATE_PERIODS)), SPACE, SPACE)
def test_a_rate_is_a_count_per_period_and_prints_back(amount: Decimal, period: str,
                                                      before: str, between: str) -> None:
    rate = parse_rate(f"{written(amount)}{before}/{between}{period}")
    assert rate == Rate(count=float(amount), period=RATE_PERIODS[period])
    assert rate.per_second == pytest.approx(float(amount) / RATE_PERIODS[period], rel=1e-12)
    assert parse_rate(str(rate)) == rate  # what the policy shows can be read back


@given(ANYTHING)
def test_any_rate_input_is_a_positive_finite_rate_or_refused(value: object) -> None:
    try:
        rate = parse_rate(value)
    except ValueError:
        return
    assert math.isfinite(rate.count) and rate.count > 0 and rate.period in (1.0, 60.0, 3600.0)


@pytest.mark.parametrize("value", ["0/s", "0.0/m", "9" * 400 + "/s", "5/d", "/s", "5", 5])
def test_rates_that_cannot_be_used_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(value)
