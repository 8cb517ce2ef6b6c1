"""from_domain and message_id find the field a MULTILINE regex finds (the form they
had before the search was made cheaper), on any header section."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.message import _field, from_domain, message_id

_REGEX = {
    name: re.compile(rb"^" + re.escape(name) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)",
                     re.IGNORECASE | re.MULTILINE)
    for name in (b"from", b"message-id")
}
_PIECES = st.sampled_from([
    b"From", b"FROM", b"from", b"From-Sender", b"Message-ID", b"message-id", b"Message-Id2",
    b"X-From", b" ", b"\t", b":", b"\r\n", b"\n", b"\r", b"<a@b.test>", b"@", b"x", b">",
])


@settings(max_examples=2000, deadline=None)
@given(st.lists(_PIECES, max_size=25).map(b"".join))
def test_field_is_what_the_multiline_regex_finds(head: bytes) -> None:
    for name, regex in _REGEX.items():
        want, got = regex.search(head), _field(head, name)
        assert (got and (got.start(1), got.group(1))) == (want and (want.start(1), want.group(1)))


def test_the_first_matching_line_wins_and_lookalikes_do_not() -> None:
    head = (b"From-Sender: x@wrong.test\r\nX-From: y@wrong.test\r\n"
            b"FROM : Name <user@Right.TEST>\r\nMessage-IDs: <no>\r\n"
            b"message-id:\r\n <m1@right.test>\r\n\r\nFrom: body@wrong.test\r\n")
    assert from_domain(head) == "right.test"
    assert message_id(head) == "<m1@right.test>"
    assert from_domain(b"Subject: none\r\n\r\n") is None
