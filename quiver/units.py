"""Parsers for the human units used in policy files: durations, sizes and rates."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_BYTES = {
    None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_RATE_PERIOD = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """'500ms', '25s', '5m', '4h', '3d' or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '5m', got {value!r}")
    if isinstance(value, int | float):
        # TOML has nan and inf: every comparison with nan is false, so a nan deadline
        # would never pass and a nan delay never end.
        if not math.isfinite(value):
            raise ValueError(f"duration must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_SECONDS[m.group(2)]
        if not math.isfinite(seconds):  # hundreds of digits overflow to inf
            raise ValueError(f"duration is out of range: {value!r}")
        return seconds
    raise ValueError(f"expected a duration like '500ms', '25s', '5m', '4h' or '3d', got {value!r}")


def parse_size(value: object) -> int:
    """'256MiB', '200KiB', '1024' or an integer → bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '200KiB', got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(m.group(1)) * _SIZE_BYTES[m.group(2)]
    raise ValueError(f"expected a size like '200KiB' or '256MiB', got {value!r}")


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: `count` events per `period` seconds."""

    count: float
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(self.period, f"{self.period}s")
        count = int(self.count) if self.count == int(self.count) else self.count
        return f"{count}/{unit}"


def parse_rate(value: object) -> Rate:
    """'300/s', '5000/m', '20000/h' → Rate."""
    if isinstance(value, str) and (m := _RATE.match(value)):
        count = float(m.group(1))
        if count <= 0:
            raise ValueError(f"rate must be positive, got {value!r}")
        if not math.isfinite(count):  # hundreds of digits overflow to inf
            raise ValueError(f"rate is out of range: {value!r}")
        return Rate(count=count, period=_RATE_PERIOD[m.group(2)])
    raise ValueError(f"expected a rate like '300/s', '5000/m' or '20000/h', got {value!r}")
