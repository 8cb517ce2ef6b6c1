"""Incremental reading of SMTP replies (RFC 5321 4.2) from a byte stream.

Pure and bounded: bytes in, complete replies out, `ReplyError` for anything that
is not a reply. The wire protocol feeds it whatever each socket read delivers, so
several pipelined replies may arrive in one read, or one reply across many.

A line longer than MAX_LINE is read to its end but only its code and the first
KEPT_TEXT octets of its text are kept (as Postfix does): a server with a verbose
banner or a long refusal text still gets its mail, and memory stays bounded.
"""

from __future__ import annotations

# RFC 5321 4.5.3.1.5 allows 512 octets per reply line (CRLF included); some
# servers send longer lines. Lines up to this many octets (CRLF excluded) are kept
# whole; past it, the rest of the line is read and dropped, so a server that never
# sends LF cannot grow the buffer.
MAX_LINE = 4096
# What is kept of a longer line: its code and separator, and this much of its text
# (events carry at most 512 characters of a reply's text anyway).
KEPT_TEXT = 512
_KEPT = 4 + KEPT_TEXT
# An EHLO reply lists a few dozen extensions at most.
MAX_LINES = 128

RawReply = tuple[int, str]  # (code, text), continuation lines joined with "\n"

# Quoted in errors: enough to recognise what the server sent.
_QUOTE = 60


class ReplyError(Exception):
    """The server sent something that is not an SMTP reply.

    `replies` are the complete replies of the same read that came before it: they
    were said, and a reply to the end of data among them means the message was taken.
    """

    def __init__(self, text: str, replies: list[RawReply] | None = None) -> None:
        super().__init__(text)
        self.replies = replies or []


class ReplyReader:
    """Accumulates bytes and returns each reply once it is complete."""

    __slots__ = ("_code", "_lines", "_partial", "_skipping")

    def __init__(self) -> None:
        self._partial = b""  # an incomplete line (its kept head, if it is over-long)
        self._lines: list[bytes] = []  # text of the reply's continuation lines so far
        self._code = 0  # their code, 0 when no reply is in progress
        # The incomplete line is over-long: what follows, up to its LF, is dropped.
        self._skipping = False

    @property
    def idle(self) -> bool:
        """True if no reply is partly read."""
        return not self._partial and not self._lines

    def feed(self, data: bytes) -> list[RawReply]:
        out: list[RawReply] = []
        if self._skipping:
            # The tail of an over-long line: nothing of it is kept.
            end = data.find(b"\n")
            if end < 0:
                return out
            data = self._partial + b"\n" + data[end + 1:]
            self._partial = b""
            self._skipping = False
        elif self._partial:
            data = self._partial + data
            self._partial = b""
        try:
            start = 0
            end = data.find(b"\n")
            while end >= 0:
                line = data[start:end]
                start = end + 1
                end = data.find(b"\n", start)
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > MAX_LINE:
                    line = line[:_KEPT]
                reply = self._line(line)
                if reply is not None:
                    out.append(reply)
            if start < len(data):
                rest = data[start:]
                if len(rest) > MAX_LINE + 1:  # + its CR
                    rest = rest[:_KEPT]
                    self._skipping = True
                self._partial = rest
        except ReplyError as exc:
            exc.replies = out
            raise
        return out

    def _line(self, line: bytes) -> RawReply | None:
        head = line[:3]
        sep = line[3:4]
        # Three digits, the first 2-5 (RFC 5321 4.2.1), then SP, '-' or the line end.
        if not (len(head) == 3 and head.isdigit() and 50 <= head[0] <= 53) or sep not in (
            b" ", b"-", b""
        ):
            raise ReplyError(f"not an SMTP reply line: {line[:_QUOTE]!r}")
        code = int(head)
        if self._lines and code != self._code:
            raise ReplyError(
                f"continuation line with code {code} in a {self._code} reply: {line[:_QUOTE]!r}"
            )
        if sep == b"-":
            if len(self._lines) >= MAX_LINES:
                raise ReplyError(f"reply of more than {MAX_LINES} lines")
            self._lines.append(line[4:])
            self._code = code
            return None
        if self._lines:
            self._lines.append(line[4:])
            text = b"\n".join(self._lines)
            self._lines = []
            self._code = 0
        else:
            text = line[4:]
        return code, text.decode("utf-8", "replace")
