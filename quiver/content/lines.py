"""Line arithmetic over a CRLF-only buffer: where a line is, and which are too long.

Everything is whole-buffer C work (split, count, find) because `has_long_line`
runs on every message the sender sends.
"""

from __future__ import annotations

import re

# Re-exported for the content modules; defined once, with the line limit's RFCs,
# in quiver.message.
from quiver.message import CRLF as CRLF
from quiver.message import MAX_LINE as MAX_LINE

# How much of an offending line an error quotes: enough to find it.
QUOTE = 40
# Half a line and one octet: see may_have_long_line.
_WINDOW = (MAX_LINE + 2) // 2
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


def has_long_line(buf: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether a line of buf[start:end] (split at CRLF) is longer than MAX_LINE octets."""
    stop = len(buf) if end is None else end
    if not may_have_long_line(buf, start, stop):
        return False
    part = buf[start:stop] if start or stop != len(buf) else buf
    return max(map(len, part.split(CRLF))) > MAX_LINE


def may_have_long_line(buf: bytes, start: int = 0, end: int | None = None) -> bool:
    """False when no line of buf[start:end] can be longer than MAX_LINE octets, whatever
    ends its lines (a CR only shortens them): a cheap test that copies nothing.

    Any MAX_LINE + 1 consecutive octets hold a whole window of _WINDOW octets aligned
    on `start`, so a line that long leaves a window with no LF. Seeing an LF in every
    window takes one `find` per 500 octets, against a split that makes an object of
    every line (about 3x slower on the demo's 5 KB message); a message with a window
    and no LF (a line of 500+ octets somewhere) is measured exactly by the caller.
    """
    stop = len(buf) if end is None else end
    find = buf.find
    for window in range(start, stop - _WINDOW + 1, _WINDOW):
        if find(b"\n", window, window + _WINDOW) < 0:
            return True
    return False


def first_long_line(buf: bytes, start: int = 0, end: int | None = None) -> tuple[int, int] | None:
    """(offset, length) of the first line of buf[start:end] longer than MAX_LINE, or None."""
    stop = len(buf) if end is None else end
    pos = start
    while pos < stop:
        eol = buf.find(CRLF, pos, stop)
        line_end = stop if eol < 0 else eol
        if line_end - pos > MAX_LINE:
            return pos, line_end - pos
        if eol < 0:
            break
        pos = eol + 2
    return None


def line_number(buf: bytes, offset: int) -> int:
    """The 1-based number of the line holding buf[offset]."""
    return buf.count(b"\n", 0, offset) + 1


def first_eight_bit(buf: bytes, start: int = 0, end: int | None = None) -> int | None:
    """Offset of the first byte ≥ 0x80 in buf[start:end], or None."""
    match = _EIGHT_BIT.search(buf, start, len(buf) if end is None else end)
    return None if match is None else match.start()
