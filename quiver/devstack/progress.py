"""A progress line on stderr: a bar on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(1, total)
        self._tty = sys.stderr.isatty()
        # None: nothing shown yet (a 0.0 here would be "shown at boot" and hold back the
        # first line for the first seconds of a freshly booted machine).
        self._last: float | None = None
        self._start = time.monotonic()

    def update(self, done: int, extra: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if (not force and self._last is not None
                and now - self._last < (0.2 if self._tty else 3.0)):
            return
        self._last = now
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        bar = "#" * filled + "." * (width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} {extra}"
        if self._tty:
            sys.stderr.write("\r" + line.ljust(100))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self, done: int, extra: str = "") -> None:
        self.update(done, extra, force=True)
        if self._tty:
            sys.stderr.write("\n")
