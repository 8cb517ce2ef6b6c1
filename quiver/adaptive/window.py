"""Counts over a sliding window, on an injected clock.

A window of W seconds is kept as BUCKETS buckets of W/BUCKETS seconds: what falls out
of the window leaves a bucket at a time, so a count is exact to within one bucket's
share of the window, and memory is a few integers whatever the rate of attempts.
Times are only compared with other readings of the same clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

BUCKETS = 10


class WindowCount:
    """How many events happened in the last `window` seconds."""

    __slots__ = ("_buckets", "_clock", "_total", "_width")

    def __init__(self, window: float, *, clock: Callable[[], float]) -> None:
        self._width = window / BUCKETS
        self._clock = clock
        # (bucket index, count), oldest first.
        self._buckets: deque[list[int]] = deque()
        self._total = 0

    def add(self, count: int = 1) -> None:
        index = int(self._clock() // self._width)
        buckets = self._buckets
        if buckets and buckets[-1][0] == index:
            buckets[-1][1] += count
        else:
            buckets.append([index, count])
            self._expire(index)
        self._total += count

    def total(self) -> int:
        self._expire(int(self._clock() // self._width))
        return self._total

    def _expire(self, index: int) -> None:
        oldest = index - BUCKETS + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest:
            self._total -= buckets.popleft()[1]
