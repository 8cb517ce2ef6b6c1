"""The token in a mailto unsubscribe request's Subject: as clients send it, replied
to, folded, RFC 2047 encoded; and nothing from subjects that are no request, however
hostile."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.feedback.encoded_words import decode_words
from quiver.feedback.limits import MAX_VALUE_CHARS
from quiver.returnpath import rotated
from quiver.unsubscribe import Subject
from quiver.unsubscribe.headers import UnsubscribeHeaders
from quiver.unsubscribe.mailto import MAX_REPLY_PREFIXES, token_from_subject
from quiver.unsubscribe.token import MAX_TOKEN_CHARS

T0 = 1_790_000_000.0
# A fixed secret: the token is in the test ids, which every pytest-xdist worker must
# collect alike.
TOKEN = UnsubscribeHeaders(
    rotated(None, now=T0 - 60, random_bytes=lambda n: bytes(range(n))), clock=lambda: T0).token(
    Subject(tenant="acme", campaign="dec", message_id="m-1", recipient="ann@example.org"))


def b_words(text: str, *, size: int = 30, charset: str = "utf-8") -> str:
    """`text` as a client encodes a long subject: B-encoded words, folded between."""
    chunks = [text[i:i + size] for i in range(0, len(text), size)]
    return "\r\n ".join(f"=?{charset}?B?{base64.b64encode(c.encode()).decode()}?="
                        for c in chunks)


@pytest.mark.parametrize("subject", [
    f"unsubscribe-{TOKEN}",
    f"  unsubscribe-{TOKEN}  ",
    f"Unsubscribe-{TOKEN}",
    f"UNSUBSCRIBE-{TOKEN}",
    f"Re: unsubscribe-{TOKEN}",
    f"RE: Re:  AW: unsubscribe-{TOKEN}",
    f"Re[2]: unsubscribe-{TOKEN}",
    f"Re : SV: unsubscribe-{TOKEN}",
    f"Re:unsubscribe-{TOKEN}",
    f"Re:\r\n unsubscribe-{TOKEN}",  # folded after the prefix, unfolded with its space
    f"=?utf-8?Q?unsubscribe-{TOKEN.replace('_', '=5F').replace('-', '=2D')}?=",
    b_words(f"unsubscribe-{TOKEN}"),
    "Re: " + b_words(f"unsubscribe-{TOKEN}", size=7),
    f"=?ISO-8859-1*en?b?{base64.b64encode(f'unsubscribe-{TOKEN}'.encode()).decode()}?=",
])
def test_the_token_comes_out_of_the_subjects_clients_send(subject: str) -> None:
    assert token_from_subject(subject) == TOKEN


@pytest.mark.parametrize("subject", [
    None,
    "",
    "unsubscribe",
    "unsubscribe-",
    "Please unsubscribe me",
    f"Automatic reply: unsubscribe-{TOKEN}",
    f"Fwd: unsubscribe-{TOKEN}",  # a forward is someone passing the mail on, not asking
    f"unsubscribe-{TOKEN} please",
    f"unsubscribe-{TOKEN[:20]} {TOKEN[20:]}",
    f"unsubscribe {TOKEN}",
    f"unsubscribe-{TOKEN}=",
    f"unsubscribe-<{TOKEN}>",
    "Re: " * (MAX_REPLY_PREFIXES + 1) + f"unsubscribe-{TOKEN}",
    "unsubscribe-" + "A" * (MAX_TOKEN_CHARS + 1),
])
def test_subjects_that_are_no_request_give_no_token(subject: str | None) -> None:
    assert token_from_subject(subject) is None


def test_as_many_reply_prefixes_as_allowed_still_give_the_token() -> None:
    subject = "Re: " * MAX_REPLY_PREFIXES + f"unsubscribe-{TOKEN}"
    assert token_from_subject(subject) == TOKEN


@pytest.mark.parametrize(("value", "decoded"), [
    ("=?utf-8?B?w6lw?=", "ép"),
    ("=?utf-8?q?a_b=3Dc?=", "a b=c"),
    ("=?utf-8?B?YQ==?= =?utf-8?B?Yg==?=", "ab"),  # space between words is dropped
    ("x =?utf-8?B?YQ==?= y", "x a y"),  # but kept next to plain text
    ("=?utf-8?B?YQ==?= z =?utf-8?B?Yg==?=", "a z b"),
    ("=?no-such-charset?B?YWI=?=", "ab"),  # unknown charset: UTF-8
    ("=?idna?B?YWI=?=", "ab"),  # a codec that is not a text encoding: UTF-8
    ("=?utf-8?B?YWJj?=", "abc"),
    ("=?utf-8?B?YW?=", "a"),  # bad padding is repaired, as mime.decode_transfer does
    ("=?utf-8?X?YWI=?=", "=?utf-8?X?YWI=?="),  # no such encoding: left as written
    ("=?utf-8?B?YWI=", "=?utf-8?B?YWI="),  # unterminated
    ("=?utf-8?Q?\xff?=", "\xff"),
    ("plain", "plain"),
])
def test_encoded_words_decode_and_what_does_not_decode_stays(value: str, decoded: str) -> None:
    assert decode_words(value) == decoded


# Subjects an attacker writes: encoded-word fragments, reply prefixes, the request
# word, token characters and everything else, up to a parsed field's length.
_PIECES = st.sampled_from([
    "=?", "?=", "?B?", "?Q?", "?b?", "utf-8", "x-unknown", "idna", "=?utf-8?B?", "=?utf-8?Q?",
    "Re:", "RE[9]:", "AW: ", " ", "\t", "\r\n ", "unsubscribe-", "UNSUBSCRIBE-", "_", "-",
    "=5F", "=", "==", TOKEN[:10], TOKEN, "\x00", "\u00e9", "\ufffd", "*en",
])
_HOSTILE = st.lists(st.one_of(_PIECES, st.text(max_size=30)), max_size=80).map("".join).map(
    lambda s: s[:MAX_VALUE_CHARS])


@settings(max_examples=400)
@given(_HOSTILE)
def test_hostile_subjects_never_raise_and_any_token_is_of_token_characters(
        subject: str) -> None:
    token = token_from_subject(subject)
    assert token is None or (0 < len(token) <= MAX_TOKEN_CHARS and all(
        c.isascii() and (c.isalnum() or c in "-_") for c in token))
    assert isinstance(decode_words(subject), str)


@settings(max_examples=200)
@given(prefixes=st.lists(st.sampled_from(["Re:", "RE:", "AW:", "Sv:", "Re[3]:", "Odp:"]),
                         max_size=MAX_REPLY_PREFIXES),
       encode=st.booleans(), case=st.sampled_from(["unsubscribe", "Unsubscribe", "UNSUBSCRIBE"]),
       size=st.integers(min_value=1, max_value=60))
def test_any_reply_chain_and_encoding_of_a_request_gives_its_token(
        prefixes: list[str], encode: bool, case: str, size: int) -> None:
    request = f"{case}-{TOKEN}"
    subject = " ".join([*prefixes, b_words(request, size=size) if encode else request])
    assert token_from_subject(subject) == TOKEN


def test_long_hostile_subjects_give_no_token() -> None:
    """The shapes that would make a backtracking pattern slow, at a parsed field's
    full length, give no token (and finish: each pattern backtracks over a bounded
    window only, so a regression shows as a test that hangs, not a flaky time)."""
    for subject in ("=?" * (MAX_VALUE_CHARS // 2), "=?a?B?" + "A" * MAX_VALUE_CHARS,
                    "Re:" * (MAX_VALUE_CHARS // 3), " " * MAX_VALUE_CHARS + "x",
                    "re " * (MAX_VALUE_CHARS // 3)):
        assert token_from_subject(subject) is None
