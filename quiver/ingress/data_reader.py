"""SMTP DATA as it came off the wire: exact bytes, refusing what two servers could read two ways.

Pieces come from the stream as read up to each LF (or a fragment of a longer line).
A message is accepted only if every line ends with CRLF: a bare LF or a bare CR is
where SMTP smuggling lives (one server ends the message at `\\n.\\n`, the next reads
on and finds a second message). So once a bare line end is seen the message is
refused, and its end is taken at the *earliest* dot line under any reading of line
ends (`\\n.\\n`, `\\n.\\r\\n`, `\\r.\\r`, `\\r\\n.\\n`, ...); the session is then closed,
so nothing after it is ever read as commands or as another message.

A dot line ended by a bare CR and followed by nothing (`\\r.\\r`, then silence) is
only seen once the client sends an LF or the idle timeout closes the session;
either way nothing is enqueued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# A CR not followed by LF, or an LF not preceded by CR (RFC 5321 2.3.8).
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# A dot alone on a line, under any reading of CR and LF as line ends.
_ANY_DOT_LINE = re.compile(rb"[\r\n]\.[\r\n]")


class Outcome(Enum):
    ACCEPTED = "accepted"
    TOO_BIG = "too_big"
    BARE_LINE_END = "bare_line_end"


@dataclass(frozen=True, slots=True)
class DataEnd:
    outcome: Outcome
    # The message with transparency dots removed (RFC 5321 4.5.2); empty unless ACCEPTED.
    message: bytes
    size: int  # bytes of message seen, counted also past the limit
    reason: str = ""


class DataReader:
    """Feed it the pieces of one DATA section; `feed` returns a DataEnd at its end."""

    def __init__(self, *, max_size: int) -> None:
        self._max_size = max_size
        self._message = bytearray()
        self._size = 0
        self._at_line_start = True
        # The last two bytes seen; a dot line may straddle pieces. The start of the
        # data counts as a line start.
        self._tail = b"\r\n"
        self._bare: str | None = None

    def feed(self, piece: bytes) -> DataEnd | None:
        """One piece: up to and including an LF, or a fragment of a longer line."""
        window = self._tail + piece
        if self._bare is None:
            if self._at_line_start and piece == b".\r\n":
                return self._end()
            bare = _BARE.search(window, len(self._tail) - 1,
                                len(window) - 1 if window.endswith(b"\r") else len(window))
            if bare is not None:
                self._bare = _describe(window, bare.start())
        if self._bare is not None:
            if _ANY_DOT_LINE.search(window):
                return DataEnd(Outcome.BARE_LINE_END, b"", self._size, self._bare)
            self._tail = window[-2:]
            self._at_line_start = piece.endswith((b"\n", b"\r"))
            return None
        data = piece[1:] if self._at_line_start and piece.startswith(b".") else piece
        self._size += len(data)
        if self._size <= self._max_size:
            self._message += data
        elif self._message:
            self._message = bytearray()  # over the limit: keep counting, stop holding
        self._tail = window[-2:]
        # window, not piece: a long line's last fragment may end at its CR, then "\n".
        self._at_line_start = window.endswith(b"\r\n")
        return None

    def _end(self) -> DataEnd:
        if self._size > self._max_size:
            return DataEnd(Outcome.TOO_BIG, b"", self._size,
                           f"message of {self._size:,} bytes is over the limit of "
                           f"{self._max_size:,}")
        return DataEnd(Outcome.ACCEPTED, bytes(self._message), self._size)


def _describe(window: bytes, at: int) -> str:
    what = "bare CR" if window[at:at + 1] == b"\r" else "bare LF"
    return (f"{what} in message data (RFC 5321 2.3.8: lines end with CRLF); "
            "refused so it cannot be read as the end of the message")
