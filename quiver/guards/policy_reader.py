"""The `[guards]` section of the deployed policy, for the export path, which has no
policy of its own to reload: the text is re-read at most once a minute (an S3 re-read
with an unchanged ETag is one small request) and parsed only when it changed.

A policy that does not load leaves the last good section in force and is logged with
every problem, once per text; before any text loaded, the guards are off (None), so
a broken policy never stops the export itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from quiver.policy.guards import GuardsPolicy
from quiver.policy.load import PolicyError, parse_policy

log = logging.getLogger("quiver.guards")

# How stale a guards change may be at the export: a threshold an operator lowers
# applies within this, and each read is one request per warm function instance.
REREAD_INTERVAL: Final = 60.0


class GuardsPolicyReader:
    def __init__(self, read: Callable[[], str], *, origin: str,
                 interval: float = REREAD_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._origin = origin
        self._interval = interval
        self._clock = clock
        self._next_read = float("-inf")
        self._text: str | None = None
        self._rejected: str | None = None
        self.current: GuardsPolicy | None = None

    def __call__(self) -> GuardsPolicy | None:
        now = self._clock()
        if now < self._next_read:
            return self.current
        self._next_read = now + self._interval
        try:
            text = self._read()
        except PolicyError as exc:
            log.error("guards: policy %s not read (%s); %s", self._origin,
                      "; ".join(exc.problems),
                      "the last one stays in force" if self.current else "guards are off")
            return self.current
        if text in (self._text, self._rejected):
            return self.current
        try:
            self.current = parse_policy(text, origin=self._origin).guards
        except PolicyError as exc:
            self._rejected = text
            log.error("guards: policy %s does not load; %s: %s", self._origin,
                      "the last one stays in force" if self.current else "guards are off",
                      "; ".join(exc.problems))
            return self.current
        self._text = text
        return self.current
