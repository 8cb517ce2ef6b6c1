"""What goes on the wire: command lines and the DATA payload.

Safety at the lowest layer: every command argument is checked here, whatever
validated it before, so no caller can put CR, LF, NUL, a space or an angle
bracket into a command line (SMTP command injection); the message body is
written with CRLF line ends and dot-stuffed (RFC 5321 4.5.2) here and nowhere
else, so a bare LF or a line holding a single dot can never end the DATA early
(SMTP smuggling); and `payload_problem` refuses what a receiver would mangle: a
NUL, a line over 998 octets (folded by some, breaking DKIM), 8-bit bytes not
declared with BODY=8BITMIME.
"""

from __future__ import annotations

import re

from quiver.content.lines import MAX_LINE, may_have_long_line
from quiver.message import WireReady, to_crlf

# Printable ASCII without space and without the path's own brackets. Addresses
# are ASCII (domains as A-labels; SMTPUTF8 is not offered) by the time they get here.
_UNSAFE_ARG = re.compile(r"[^\x21-\x3b\x3d\x3f-\x7e]")
# EHLO's argument is a domain or an address literal: no '<>' concern, no space.
_UNSAFE_NAME = re.compile(r"[^\x21-\x7e]")
END_OF_DATA = b".\r\n"


class UnsafeArgument(ValueError):
    """A command argument that would break out of its command line."""


def _checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    if pattern.search(value):
        raise UnsafeArgument(f"{what} {value[:80]!r} has a character not allowed on the wire")
    return value


def ehlo(name: str, *, verb: str = "EHLO") -> bytes:
    if not name:
        raise UnsafeArgument(f"{verb} needs a name")
    return f"{verb} {_checked(name, _UNSAFE_NAME, verb)}\r\n".encode("ascii")


def mail(sender: str, *, eight_bit: bool = False) -> bytes:
    """The MAIL FROM line; an empty sender is a bounce's null reverse-path (`<>`).
    `eight_bit` declares 8-bit content (RFC 6152: BODY=8BITMIME)."""
    body = " BODY=8BITMIME" if eight_bit else ""
    return f"MAIL FROM:<{_checked(sender, _UNSAFE_ARG, 'sender')}>{body}\r\n".encode("ascii")


def rcpt(recipient: str) -> bytes:
    if not recipient:
        raise UnsafeArgument("empty recipient")
    return f"RCPT TO:<{_checked(recipient, _UNSAFE_ARG, 'recipient')}>\r\n".encode("ascii")


def payload_problem(message: bytes, *, eight_bit: bool) -> str | None:
    """Why `message` may not be sent as DATA, or None. Whole-buffer scans: a NUL, an
    8-bit byte unless `eight_bit` (BODY=8BITMIME) was declared, a line (as CRLF, LF or
    a lone CR end it) over 998 octets; only a message that may have such a line is
    normalised to measure its lines exactly. WireReady bytes were checked for NUL and
    long lines when they were made."""
    ready = type(message) is WireReady
    if not ready and b"\0" in message:
        return "the message has a NUL byte"
    if not eight_bit and not message.isascii():
        return "8-bit message content not declared with BODY=8BITMIME"
    if not ready and may_have_long_line(message) and max(
            map(len, to_crlf(message).split(b"\r\n"))) > MAX_LINE:
        return f"a line of the message is longer than {MAX_LINE} octets"
    return None


def data_payload(message: bytes, *, then: bytes = b"") -> bytes:
    """The message as it follows DATA's 354: CRLF line ends, dot-stuffed, ending CRLF . CRLF,
    and `then` (the next transaction's pipelined commands) right behind it.

    The checks are whole-buffer scans (count, find, replace): a message with no
    line starting with '.' and already in CRLF form costs a few passes at memchr
    speed and one copy (for the terminator and `then`, so body and commands go out
    in one write without a second copy of the body).
    """
    body = to_crlf(message)
    if body.startswith(b"."):
        body = b"." + body
    if b"\n." in body:
        # After to_crlf every LF follows a CR, so this is every line that starts with '.'.
        body = body.replace(b"\n.", b"\n..")
    if not body.endswith(b"\r\n"):
        # The terminator must start a line of its own.
        body += b"\r\n"
    return b"".join((body, END_OF_DATA, then))
