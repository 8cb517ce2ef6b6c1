"""The per-message copies built by hand instead of with `dataclasses.replace` keep every
field: a field added to the dataclass later and not to the copy fails here."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from quiver.envelope import Envelope, LastReply
from quiver.storage.base import Received


def test_envelope_without_raw_keeps_every_other_field() -> None:
    env = Envelope(
        id="m-1", sender="news@example.com", recipients=("a@example.net", "b@example.net"),
        raw=b"Subject: hi\r\n\r\nbody\r\n", raw_s3=None, pool="p", tenant="t", campaign="c",
        meta={"k": "v"}, expires=datetime(2030, 1, 1, tzinfo=UTC), attempt=2,
        not_before=12.5, queued_at=10.25,
        last={"a@example.net": LastReply.of(code=451, enhanced="4.3.0", text="busy",
                                            tried=True)},
    )
    # Every field differs from its default, so a field the copy dropped would show.
    for f in dataclasses.fields(Envelope):
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else f.default)
        assert f.name == "raw_s3" or getattr(env, f.name) != default, f.name
    assert env.without_raw() == dataclasses.replace(env, raw=None)
    s3 = dataclasses.replace(env, raw=None, raw_s3="s3://bucket/key")
    assert s3.without_raw() == s3


def test_received_without_body_keeps_every_other_field() -> None:
    received = Received(body='{"v":1}', receipt="r-1", message_id="m-1", receive_count=3,
                        sent_at=1700000000.5, copy=True)
    for f in dataclasses.fields(Received):
        assert getattr(received, f.name) != f.default, f.name
    assert received.without_body() == dataclasses.replace(received, body="")
