"""Incremental reading of SMTP replies (RFC 5321 4.2) from a byte stream.

Pure and bounded: bytes in, complete replies out, `ReplyError` for anything that
is not a reply. The wire protocol feeds it whatever each socket read delivers, so
several pipelined replies may arrive in one read, or one reply across many.
"""

from __future__ import annotations

# RFC 5321 4.5.3.1.5 allows 512 octets per reply line (CRLF included); some
# servers send longer lines, none this long (CRLF excluded). Without a bound, a
# server that never sends LF would grow the buffer forever.
MAX_LINE = 4096
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

    __slots__ = ("_code", "_lines", "_partial")

    def __init__(self) -> None:
        self._partial = b""  # an incomplete line
        self._lines: list[bytes] = []  # text of the reply's continuation lines so far
        self._code = 0  # their code, 0 when no reply is in progress

    @property
    def idle(self) -> bool:
        """True if no reply is partly read."""
        return not self._partial and not self._lines

    def feed(self, data: bytes) -> list[RawReply]:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        out: list[RawReply] = []
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
                    raise ReplyError(f"reply line longer than {MAX_LINE} octets")
                reply = self._line(line)
                if reply is not None:
                    out.append(reply)
            if start < len(data):
                rest = data[start:]
                if len(rest) > MAX_LINE + 1:  # + its CR
                    raise ReplyError(f"reply line longer than {MAX_LINE} octets")
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
