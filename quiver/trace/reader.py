"""The protocol both event readers implement."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from quiver.trace.target import Event, Target, Window

# (done, total, what): progress of a long read, for a command to show.
Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, what: str) -> None:
    return None


class EventReader(Protocol):
    """Reads the exported events of a target within a window."""

    @property
    def name(self) -> str:
        """What the output calls this reader ("s3", "athena")."""
        ...

    def read(self, target: Target, window: Window, *,
             progress: Progress = no_progress) -> list[Event]:
        """Every exported event record that `target` matches, in no particular order.
        Raises TraceError when the store cannot be read."""
        ...

    def describe(self) -> str:
        """What the last read did (objects listed, bytes scanned), for the output."""
        ...
