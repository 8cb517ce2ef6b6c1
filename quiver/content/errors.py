"""The one error of the content checks: what is wrong with a message, and where."""

from __future__ import annotations


class ContentError(ValueError):
    """A message that cannot be sent as it is and cannot be made sendable.

    `line` is the 1-based line number (lines end at CRLF, a bare LF or a bare CR,
    as on the wire) of the first offending line, when there is one.
    """

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason if line is None else f"line {line}: {reason}")
