"""The client and `quiver enqueue` check a message's content before anything leaves the
process: over max_message_size (a 300 MB file is refused by its size, never read), empty,
binary or header-less input, long lines under `long_lines = "refuse"`. Nothing is
uploaded to the spill bucket or sent to the queue for a refused message."""

from __future__ import annotations

import mmap
import resource
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from test_lifecycle_content import BAD_MESSAGES

from quiver import cli
from quiver.client import OutboundMessage, QuiverClient
from quiver.envelope import EnvelopeError

MESSAGE = b"From: News <news@example.com>\r\nTo: ann@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
HUGE = 300 * 1024 * 1024


class Aws:
    """SQS and S3 as the client calls them, recording every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(f"put_object {kwargs['Key']}")
        return {}

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("send_message")
        return {"MessageId": "sqs-1"}

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("send_message_batch")
        return {"Successful": [{"Id": e["Id"], "MessageId": f"sqs-{e['Id']}"}
                               for e in kwargs["Entries"]]}


def client(aws: Aws, **kwargs: Any) -> QuiverClient:
    return QuiverClient(sqs=aws, s3=aws, queue_url="https://sqs.test/q", spill_bucket="spill",
                        **kwargs)


def message(raw: Any, mid: str = "m-1") -> OutboundMessage:
    return OutboundMessage(id=mid, sender="b@example.com", to=["ann@example.org"], raw=raw)


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)  # no blocks written: the test allocates nothing
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_300_mb_message_is_refused_before_it_is_read_or_uploaded(tmp_path: Path) -> None:
    aws = Aws()
    path = sparse(tmp_path / "huge.eml", HUGE)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        before = peak_rss_mb()
        with pytest.raises(EnvelopeError) as info:
            client(aws).enqueue(message(view))
        result = client(aws).enqueue_batch([message(view), message(MESSAGE, "m-2")])
        grew = peak_rss_mb() - before
    assert str(info.value) == ("raw: message is 314,572,800 bytes, over the limit of 41,943,040 "
                               "(max_message_size)")
    assert result.failed == {"m-1": str(info.value)} and list(result.accepted) == ["m-2"]
    assert aws.calls == ["send_message_batch"]  # only the good one; nothing uploaded
    assert grew < 100  # its pages were never touched


def test_the_limit_is_the_one_the_client_was_given() -> None:
    aws = Aws()
    big = MESSAGE + b"x" * 300 * 1024  # spills to S3 under the default limit
    with pytest.raises(EnvelopeError, match=r"^raw: message is 307,\d{3} bytes, over the "
                                            r"limit of 102,400 \(max_message_size\)$"):
        client(aws, max_message_size=100 * 1024).enqueue(message(big))
    assert aws.calls == []
    client(aws).enqueue(message(big))
    assert aws.calls[0].startswith("put_object spill/") and aws.calls[1] == "send_message"


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "raw: empty message"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "raw: line 1: NUL byte"),
    (b"Hello,\r\n\r\nno header here\r\n", "raw: line 1: not a header field: b'Hello,'"),
    (b"Subject: x\r\n\r\nbody\r\n", "raw: no From header field"),
])
def test_a_message_that_is_not_one_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    aws = Aws()
    with pytest.raises(EnvelopeError) as info:
        client(aws).enqueue(message(raw))
    assert str(info.value).startswith(reason)
    assert aws.calls == []


@given(BAD_MESSAGES)
@settings(max_examples=150)
def test_generated_bad_messages_are_refused_with_a_reason_and_nothing_sent(raw: bytes) -> None:
    aws = Aws()
    with pytest.raises(EnvelopeError) as info:
        client(aws).enqueue(message(raw))
    reason = str(info.value)
    assert reason.startswith("raw: ") and any(
        word in reason for word in ("line ", "From header", "NUL", "empty")), reason
    assert aws.calls == []


def test_long_lines_are_refused_only_when_the_client_is_told_to() -> None:
    aws = Aws()
    raw = MESSAGE + b"y" * 1200 + b"\r\n"
    with pytest.raises(EnvelopeError, match=r"^raw: line 6: 1200 octets long"):
        client(aws, long_lines="refuse").enqueue(message(raw))
    assert aws.calls == []
    client(aws).enqueue(message(raw))  # re-encoded by the sender
    assert aws.calls == ["send_message"]


@pytest.fixture
def deployment_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment whose AWS endpoint is closed: any request would fail loudly."""
    for name in ("QUIVER_OUTBOUND_QUEUE_URL", "QUIVER_OUTBOUND_DLQ_URL",
                 "QUIVER_EVENTS_QUEUE_URL"):
        monkeypatch.setenv(name, "http://127.0.0.1:9/000000000000/q")
    monkeypatch.setenv("QUIVER_SPILL_BUCKET", "spill")
    monkeypatch.setenv("QUIVER_EVENTS_BUCKET", "events")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")


def enqueue(*args: str) -> int:
    return cli.main(["enqueue", "--from", "b@example.com", "--to", "ann@example.org", *args])


def test_cli_refuses_a_300_mb_file_by_its_size(tmp_path: Path, deployment_env: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = sparse(tmp_path / "huge.eml", HUGE)
    before = peak_rss_mb()
    assert enqueue(str(path)) == 2
    assert peak_rss_mb() - before < 100  # not read
    assert capsys.readouterr().err == (
        "quiver enqueue: invalid message: raw: message is 314,572,800 bytes, over the limit "
        "of 41,943,040 (max_message_size)\n")


def test_cli_says_empty_message_for_an_empty_file(tmp_path: Path, deployment_env: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.eml").write_bytes(b"")
    assert enqueue(str(tmp_path / "empty.eml")) == 2
    assert capsys.readouterr().err == "quiver enqueue: invalid message: raw: empty message\n"


def test_cli_checks_against_a_policys_content_rules(tmp_path: Path, deployment_env: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "policy.toml").write_text(
        'default_pool = "p"\n[sources.a]\nip = "192.0.2.1"\nehlo = "a.example.com"\n'
        '[pools.p]\nsources = ["a"]\n[content]\nmax_message_size = "2KiB"\n'
        'long_lines = "refuse"\n')
    (tmp_path / "long.eml").write_bytes(MESSAGE + b"z" * 1000 + b"\r\n")
    config = ["--config", str(tmp_path / "policy.toml")]
    assert enqueue(*config, str(tmp_path / "long.eml")) == 2
    assert capsys.readouterr().err == (
        "quiver enqueue: invalid message: raw: line 6: 1000 octets long; lines may be at most "
        "998 (RFC 5322 2.1.1) and content.long_lines is 'refuse'\n")
    (tmp_path / "big.eml").write_bytes(MESSAGE + b"z\r\n" * 800)
    assert enqueue(*config, str(tmp_path / "big.eml")) == 2
    assert "over the limit of 2,048 (max_message_size)" in capsys.readouterr().err


class SizedAws(Aws):
    """Keeps each queue body so its size can be checked against SQS's cap."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[str] = []

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.bodies.append(kwargs["MessageBody"])
        return super().send_message(**kwargs)


@pytest.mark.parametrize("kib", [140, 150, 190, 199, 200])
def test_a_body_that_would_not_fit_sqs_as_base64_is_spilled(kib: int) -> None:
    # SQS caps a queue message at 256 KiB, and base64 makes a body a third larger: a
    # 195 KiB body inline would be a 260 KiB queue message, which SQS refuses.
    aws = SizedAws()
    raw = MESSAGE + b"x" * (kib * 1024 - len(MESSAGE))
    client(aws).enqueue(message(raw))
    (body,) = aws.bodies
    assert len(body.encode()) <= 256 * 1024
    spilled = aws.calls[0].startswith("put_object spill/")
    assert spilled == (4 * -(-len(raw) // 3) > 200 * 1024)
