"""RFC 2047 encoded words in a header field's value (`=?utf-8?B?dW5zdWJzY3JpYmU=?=`),
decoded without the standard library's header machinery, which raises on bad
base64 and leaves unknown charsets to its caller.

A word that does not decode stays as written; a charset Python cannot use decodes
as UTF-8 with replacement (mime.decode_text). Whitespace between two adjacent
encoded words is dropped (RFC 2047 6.2), so text split over several words, as
clients do with a long subject, comes back whole. The value is at most
MAX_VALUE_CHARS long when it comes from mime.parse_fields; the work is linear in it.
"""

from __future__ import annotations

import binascii
import re

from quiver.feedback.mime import Malformed, decode_text, decode_transfer

# charset (with an RFC 2231 *language, ignored), B or Q, and the text: no spaces or
# question marks inside a word (RFC 2047 2). 64 characters of charset name is more
# than any registered one.
_WORD = re.compile(r"=\?([^?\s*]{1,64})(?:\*[^?\s]{0,32})?\?([BbQq])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"[ \t\r\n]+")


def decode_words(value: str) -> str:
    """`value` with its encoded words decoded; never raises."""
    out: list[str] = []
    end = 0
    last_was_word = False
    for word in _WORD.finditer(value):
        between = value[end:word.start()]
        decoded = _decode(word.group(1), word.group(2), word.group(3))
        if decoded is None:
            out.append(between + word.group(0))
            last_was_word = False
        else:
            if not (last_was_word and _BETWEEN_WORDS.fullmatch(between)):
                out.append(between)
            out.append(decoded)
            last_was_word = True
        end = word.end()
    out.append(value[end:])
    return "".join(out)


def _decode(charset: str, encoding: str, text: str) -> str | None:
    # Encoded text is ASCII (RFC 2047 5); 8-bit text in a word is kept as the bytes it was.
    data = text.encode("utf-8", "replace")
    if encoding in "Bb":
        try:
            raw = decode_transfer(data, "base64")
        except Malformed:
            return None
    else:
        try:
            # header=True: "_" stands for a space in the Q encoding (RFC 2047 4.2).
            raw = binascii.a2b_qp(data, header=True)
        except (binascii.Error, ValueError):
            return None
    return decode_text(raw, charset)
