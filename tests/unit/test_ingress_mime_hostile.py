"""The HTTP ingress's MIME builder on hostile header values: whatever the caller
sends, build() returns a message or raises MimeError (a per-message refusal),
never another exception that would fail the whole batch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.ingress_http import mime

# An address list on which the standard library's parser fails inside itself
# (TypeError: 'ValueTerminal' object does not support item assignment) rather than
# with a HeaderParseError; schemathesis found it against the local stack's API.
BROKEN_LIST = ["000", ".00", "000"]


def build(to: list[str], headers: dict[str, str]) -> bytes | None:
    try:
        return mime.build(sender="a@acme.test", to=to, subject="s", text="t", html=None,
                          headers=headers, now=0.0)
    except mime.MimeError as exc:
        assert exc.field == "headers" or exc.field.startswith("headers.")
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=4),
       st.dictionaries(st.sampled_from(["To", "From", "Reply-To", "X-Tag", "Date"]),
                       st.text(max_size=40), max_size=3))
def test_any_recipients_and_headers_give_a_message_or_a_mime_error(
        to: list[str], headers: dict[str, str]) -> None:
    built = build(to, headers)
    assert built is None or built.endswith(b"\r\n")


def test_a_parser_failure_inside_the_standard_library_is_a_refusal() -> None:
    assert build(BROKEN_LIST, {}) is None
    assert build(["u@acme.test"], {"Reply-To": ", ".join(BROKEN_LIST)}) is None
