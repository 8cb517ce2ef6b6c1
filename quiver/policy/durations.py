"""A bounded duration setting of a policy section, read the one way every section does."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from quiver.units import parse_duration


def bounded_duration(table: Mapping[str, Any], key: str, *, section: str, default: float,
                     low: float, high: float, error: Callable[[str, str], None]) -> float:
    """`table[key]` as seconds within [low, high]; the default when absent. A bad value
    goes to `error(path, message)` and the default stands in, so every problem of the
    file is listed at once."""
    if key not in table:
        return default
    try:
        value = parse_duration(table[key])
    except (ValueError, TypeError) as exc:
        error(f"{section}.{key}", str(exc))
        return default
    if not low <= value <= high:
        error(f"{section}.{key}", f"must be between {low:g}s and {high:g}s")
        return default
    return value
