"""The lean SQS client's pure parts: SigV4, request bodies, response and error parsing.

botocore is the reference throughout: the signature must equal botocore's for
the same request and instant, request bodies must equal what boto3 serialises
for the same call, and answers must parse to what boto3 parses them to.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials, RefreshableCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.storage.base import Outgoing, Received, StorageError
from quiver.storage.sigv4 import SigV4Signer, amz_date
from quiver.storage.sqs import SQS_BATCH_BYTES, chunk_messages
from quiver.storage.sqs_lean import (
    LeanSqsClient,
    _parse_head,
    delete_entries,
    lean_queue,
    parse_batch_failures,
    parse_error,
    parse_received,
    receive_payload,
    send_entries,
    visibility_entries,
)

URL = "http://127.0.0.1:4566/123456789012/quiver-outbound"
FIXED = dt.datetime(2024, 2, 29, 23, 59, 58)
FIXED_DATE = "20240229T235958Z"


def botocore_authorization(
    *, url: str, headers: dict[str, str], body: bytes, creds: Credentials, region: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, dict[str, str]]:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FIXED)
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(creds, "sqs", region).add_auth(request)
    return request.headers["Authorization"], dict(request.headers)


# --- SigV4 ------------------------------------------------------------------


@pytest.mark.parametrize(("url", "host", "token", "region"), [
    ("http://127.0.0.1:4566/", "127.0.0.1:4566", None, "us-east-1"),
    ("https://sqs.eu-west-1.amazonaws.com/", "sqs.eu-west-1.amazonaws.com", "FQoGZXIvYXdzE//tok==",
     "eu-west-1"),
    ("https://sqs.us-east-1.amazonaws.com:8443/", "sqs.us-east-1.amazonaws.com:8443", None,
     "us-east-1"),
])
def test_signature_equals_botocore(
    url: str, host: str, token: str | None, region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = json.dumps({"QueueUrl": URL, "Entries": [{"Id": "0", "ReceiptHandle": "r h"}]}).encode()
    request_headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "AmazonSQS.DeleteMessageBatch",
        "x-amzn-query-mode": "true",
        "User-Agent": "not signed",
    }
    expected, signed_request = botocore_authorization(
        url=url, headers=request_headers, body=body, creds=creds, region=region,
        monkeypatch=monkeypatch,
    )
    signed = {
        "content-type": "application/x-amz-json-1.0",
        "host": host,
        "x-amz-date": FIXED_DATE,
        "x-amz-target": "AmazonSQS.DeleteMessageBatch",
        "x-amzn-query-mode": "true",
    }
    if token:
        signed["x-amz-security-token"] = token
        assert signed_request["X-Amz-Security-Token"] == token
    ours = SigV4Signer(region=region, service="sqs").authorization(
        access_key=creds.access_key, secret_key=creds.secret_key, headers=signed, body=body,
        date=FIXED_DATE,
    )
    assert ours == expected
    assert "SignedHeaders=content-type;host;x-amz-date;" in ours


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=2000),
    secret=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60),
    target=st.sampled_from(["ReceiveMessage", "SendMessageBatch", "DeleteMessageBatch"]),
    region=st.sampled_from(["us-east-1", "eu-central-1", "ap-southeast-2"]),
    token=st.one_of(st.none(), st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                       min_size=1, max_size=80)),
)
def test_signature_equals_botocore_for_any_body_and_key(
    body: bytes, secret: str, target: str, region: str, token: str | None,
) -> None:
    creds = Credentials("AKID", secret, token)
    with pytest.MonkeyPatch.context() as mp:
        expected, _ = botocore_authorization(
            url="http://localhost:9324/",
            headers={"Content-Type": "application/x-amz-json-1.0",
                     "X-Amz-Target": f"AmazonSQS.{target}"},
            body=body, creds=creds, region=region, monkeypatch=mp,
        )
    signed = {"content-type": "application/x-amz-json-1.0", "host": "localhost:9324",
              "x-amz-date": FIXED_DATE, "x-amz-target": f"AmazonSQS.{target}"}
    if token:
        signed["x-amz-security-token"] = token
    ours = SigV4Signer(region=region, service="sqs").authorization(
        access_key="AKID", secret_key=secret, headers=signed, body=body, date=FIXED_DATE)
    assert ours == expected


def test_signing_key_is_rederived_when_the_day_or_secret_changes() -> None:
    signer = SigV4Signer(region="us-east-1", service="sqs")
    first = signer.signing_key("secret", "20240229")
    assert signer.signing_key("secret", "20240229") is first
    assert signer.signing_key("secret", "20240301") != first
    assert signer.signing_key("rotated", "20240301") != signer.signing_key("secret", "20240301")


def test_amz_date_format() -> None:
    assert amz_date(0) == "19700101T000000Z"
    assert amz_date(1709251198) == FIXED_DATE


async def test_request_bytes_carry_a_signature_botocore_agrees_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds = Credentials("AKIDEXAMPLE", "secret/key", "session-token")
    client = LeanSqsClient(region="us-east-1", credentials=creds)
    monkeypatch.setattr("quiver.storage.sqs_lean.amz_date", lambda: FIXED_DATE)
    body = b'{"QueueUrl":"x"}'
    raw = await client.request_bytes(
        url=URL, host_header="127.0.0.1:4566", action="ReceiveMessage", body=body)
    head, _, sent_body = raw.partition(b"\r\n\r\n")
    assert sent_body == body
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST / HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Length"] == str(len(body))
    assert headers["X-Amz-Target"] == "AmazonSQS.ReceiveMessage"
    assert headers["X-Amz-Security-Token"] == "session-token"
    expected, _ = botocore_authorization(
        url="http://127.0.0.1:4566/", body=body, creds=creds, region="us-east-1",
        headers={k: v for k, v in headers.items()
                 if k in ("Content-Type", "X-Amz-Target", "x-amzn-query-mode")},
        monkeypatch=monkeypatch,
    )
    assert headers["Authorization"] == expected


async def test_a_line_break_in_the_session_token_is_refused() -> None:
    client = LeanSqsClient(region="us-east-1", credentials=Credentials("AKID", "s", "tok\r\nX: y"))
    with pytest.raises(StorageError, match="line break"):
        await client.request_bytes(url=URL, host_header="h", action="ReceiveMessage", body=b"{}")


def test_factory_refuses_missing_credentials_and_bad_urls() -> None:
    with pytest.raises(ValueError, match="no AWS credentials"):
        lean_queue(url=URL, region="us-east-1", credentials=None)
    creds = Credentials("a", "b")
    for url in ("ftp://h/1/q", "http:///1/q", "http://h\r\nX: y/1/q"):
        with pytest.raises(ValueError):
            lean_queue(url=url, region="us-east-1", credentials=creds)
    queue = lean_queue(url=URL, region="us-east-1", credentials=creds)
    assert queue.url == URL


# --- request bodies: the same JSON boto3 sends ------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


def boto3_call(operation: str, answer: dict[str, Any], **params: Any) -> tuple[Any, Any]:
    """(the JSON boto3 sends for this call, what boto3 parses `answer` to); no network."""
    sent: list[Any] = []
    client = boto3.session.Session(
        aws_access_key_id="a", aws_secret_access_key="b", region_name="us-east-1",
    ).client("sqs", endpoint_url="http://127.0.0.1:4566")

    def capture(request: Any, **_: Any) -> AWSResponse:
        sent.append(json.loads(request.body))
        return AWSResponse(request.url, 200, {"content-type": "application/x-amz-json-1.0"},
                           _Raw(json.dumps(answer).encode()))

    client.meta.events.register("before-send.sqs.*", capture)
    parsed = getattr(client, operation)(**params)
    return sent[0], parsed


def test_receive_body_matches_boto3() -> None:
    sent, _ = boto3_call(
        "receive_message", {}, QueueUrl=URL, MaxNumberOfMessages=10, WaitTimeSeconds=20,
        VisibilityTimeout=300,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        MessageAttributeNames=["quiver-copy", "quiver-reason"],
    )
    assert receive_payload(URL, max_messages=10, wait_seconds=20, visibility=300) == sent
    assert receive_payload(URL, max_messages=50, wait_seconds=0, visibility=1)[
        "MaxNumberOfMessages"] == 10
    assert receive_payload(URL, max_messages=0, wait_seconds=0, visibility=1)[
        "MaxNumberOfMessages"] == 1


def test_batch_bodies_match_boto3() -> None:
    receipts = [f"receipt-{i}" for i in range(3)]
    sent, _ = boto3_call(
        "delete_message_batch", {"Successful": [], "Failed": []}, QueueUrl=URL,
        Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)],
    )
    assert {"QueueUrl": URL, "Entries": delete_entries(receipts)} == sent

    sent, _ = boto3_call(
        "change_message_visibility_batch", {"Successful": [], "Failed": []}, QueueUrl=URL,
        Entries=[{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0}
                 for i, r in enumerate(receipts)],
    )
    assert {"QueueUrl": URL, "Entries": visibility_entries(receipts, seconds=0)} == sent

    messages = [Outgoing(body="plain"), Outgoing(body="later", delay_seconds=5000),
                Outgoing(body="tagged", attributes={"kind": "events", "v": "1"})]
    sent, _ = boto3_call("send_message_batch", {"Successful": [], "Failed": []}, QueueUrl=URL,
                         Entries=[
        {"Id": "0", "MessageBody": "plain"},
        {"Id": "1", "MessageBody": "later", "DelaySeconds": 900},
        {"Id": "2", "MessageBody": "tagged", "MessageAttributes": {
            "kind": {"DataType": "String", "StringValue": "events"},
            "v": {"DataType": "String", "StringValue": "1"}}},
    ])
    assert {"QueueUrl": URL, "Entries": send_entries(messages)} == sent


def test_chunks_respect_entry_count_and_bytes() -> None:
    small = [Outgoing(body="x") for _ in range(25)]
    assert [len(c) for c in chunk_messages(small)] == [10, 10, 5]
    big = [Outgoing(body="y" * (100 * 1024)) for _ in range(5)]
    assert [len(c) for c in chunk_messages(big)] == [2, 2, 1]
    # Attributes count towards the limit too.
    near = SQS_BATCH_BYTES // 2 - 10
    tagged = [Outgoing(body="z" * near, attributes={"k": "v" * 50}) for _ in range(2)]
    assert [len(c) for c in chunk_messages(tagged)] == [1, 1]
    # Multi-byte characters are counted as bytes.
    wide = [Outgoing(body="é" * (SQS_BATCH_BYTES // 3)) for _ in range(2)]
    assert [len(c) for c in chunk_messages(wide)] == [1, 1]
    assert chunk_messages([]) == []


# --- response parsing ---------------------------------------------------------

RECEIVE_ANSWER = {"Messages": [
    {"MessageId": "m-1", "ReceiptHandle": "rh-1", "MD5OfBody": "ignored", "Body": "{\"v\":1}",
     "Attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1700000000123"}},
    {"MessageId": "m-2", "ReceiptHandle": "rh-2", "Body": "two"},
]}


def test_receive_answer_parses_as_boto3_parses_it() -> None:
    _, parsed = boto3_call("receive_message", RECEIVE_ANSWER, QueueUrl=URL)
    ours = parse_received(json.dumps(RECEIVE_ANSWER).encode())
    assert [(r.body, r.receipt, r.message_id) for r in ours] == [
        (m["Body"], m["ReceiptHandle"], m["MessageId"]) for m in parsed["Messages"]]
    assert ours[0] == Received(body='{"v":1}', receipt="rh-1", message_id="m-1",
                               receive_count=3, sent_at=1700000000.123)
    # Missing attributes take the boto3 queue's defaults (bench/boto3_queue.py).
    assert (ours[1].receive_count, ours[1].sent_at) == (1, 0.0)
    assert parse_received(b"{}") == []
    assert parse_received(b'{"Messages": []}') == []


@pytest.mark.parametrize(("attributes", "copy"), [
    (None, False), ({}, False),
    ({"quiver-copy": {"DataType": "String", "StringValue": "1"}}, True),
    ({"quiver-reason": {"DataType": "String", "StringValue": "given up"}}, True),
    ({"other": {"DataType": "String", "StringValue": "x"}}, False),
    ("unreadable", True),  # taken for a copy: its final events are then claimed
])
def test_a_message_quiver_sent_itself_is_received_as_a_copy(attributes: Any,
                                                             copy: bool) -> None:
    message: dict[str, Any] = {"MessageId": "m", "ReceiptHandle": "r", "Body": "b"}
    if attributes is not None:
        message["MessageAttributes"] = attributes
    (received,) = parse_received(json.dumps({"Messages": [message]}).encode())
    assert received.copy is copy


@pytest.mark.parametrize("answer", [
    b"", b"null", b"[]", b"not json", b"\xff\xfe", b'{"Messages": {}}', b'{"Messages": [1]}',
    b'{"Messages": [{"MessageId": "m", "ReceiptHandle": "r"}]}',
    b'{"Messages": [{"MessageId": "m", "ReceiptHandle": 5, "Body": "b"}]}',
    b'{"Messages": [{"MessageId": "m", "ReceiptHandle": "r", "Body": "b", "Attributes": []}]}',
    b'{"Messages": [{"MessageId": "m", "ReceiptHandle": "r", "Body": "b",'
    b' "Attributes": {"ApproximateReceiveCount": " 3"}}]}',
    b'{"Messages": [{"MessageId": "m", "ReceiptHandle": "r", "Body": "b",'
    b' "Attributes": {"SentTimestamp": "\\u0661\\u0662"}}]}',
    b"[" * 100_000,
])
def test_malformed_receive_answers_raise_storage_error(answer: bytes) -> None:
    with pytest.raises(StorageError, match="ReceiveMessage"):
        parse_received(answer)


def test_batch_failures() -> None:
    answer = {"Successful": [{"Id": "0"}], "Failed": [
        {"Id": "1", "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "bad"},
        {"Id": "2", "SenderFault": False, "Code": "InternalError"},
    ]}
    _, parsed = boto3_call("delete_message_batch", answer, QueueUrl=URL, Entries=[])
    ours = parse_batch_failures("DeleteMessageBatch", json.dumps(answer).encode())
    assert [(f.id, f.code, f.sender_fault) for f in ours] == [
        (f["Id"], f["Code"], f["SenderFault"]) for f in parsed["Failed"]]
    assert ours[0].message == "bad" and ours[1].message == ""
    assert parse_batch_failures("DeleteMessageBatch", b'{"Successful": []}') == []
    with pytest.raises(StorageError, match="SenderFault"):
        parse_batch_failures("X", b'{"Failed": [{"Id": "1", "Code": "c", "SenderFault": "yes"}]}')


def test_error_answers() -> None:
    error = parse_error(action="ReceiveMessage", status=400, body=json.dumps({
        "__type": "com.amazonaws.sqs#QueueDoesNotExist",
        "message": "The specified queue does not exist."}).encode())
    assert (error.code, error.status, error.retryable) == ("QueueDoesNotExist", 400, False)
    assert str(error) == "ReceiveMessage: QueueDoesNotExist: The specified queue does not exist."
    assert isinstance(error, StorageError)

    # "Message" spelled with a capital, as moto and some services do.
    error = parse_error(action="X", status=400, body=b'{"__type": "InvalidParameterValue",'
                                                     b' "Message": "Value 20 is invalid"}')
    assert (error.code, str(error)) == ("InvalidParameterValue",
                                        "X: InvalidParameterValue: Value 20 is invalid")
    # Throttling and server faults are retryable; a proxy's HTML page still parses.
    assert parse_error(action="X", status=400,
                       body=b'{"__type": "com.amazonaws.sqs#RequestThrottled"}').retryable
    html = parse_error(action="X", status=502, body=b"<html>Bad Gateway</html>")
    assert (html.code, html.retryable) == ("HTTP502", True)
    assert "Bad Gateway" in str(html)
    # The "Code:documentation-url" form older JSON services use.
    documented = parse_error(action="X", status=400, body=b'{"__type": "ValidationException:'
                             b'http://internal.amazon.com/coral/validate/"}')
    assert documented.code == "ValidationException"


def test_error_text_is_made_printable() -> None:
    error = parse_error(action="X", status=400,
                        body=b'{"__type": "Bad\\r\\nCode", "message": "line\\nbreak\\u0000"}')
    assert "\n" not in str(error) and "\r" not in str(error) and "\x00" not in str(error)


def test_http_head_parsing() -> None:
    status, http11, headers = _parse_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\nConnection: keep-alive")
    assert (status, http11, headers) == (200, True, {
        "content-length": "2", "x-a": "1, 2", "connection": "keep-alive"})
    assert _parse_head(b"HTTP/1.0 503 Slow Down")[:2] == (503, False)
    for bad in (b"", b"SSH-2.0-OpenSSH", b"HTTP/1.1 20 OK", b"HTTP/2 200",
                b"HTTP/1.1 200 OK\r\nno colon", b"HTTP/1.1 200 OK\r\n : empty name",
                b"HTTP/1.1 200 OK" + b"\r\nA: b" * 101):
        with pytest.raises(StorageError):
            _parse_head(bad)


# --- hypothesis: garbage in -> StorageError, never another exception ---------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
message_like = st.fixed_dictionaries({}, optional={
    "MessageId": json_values | st.text(max_size=8), "ReceiptHandle": json_values | st.text(),
    "Body": json_values | st.text(), "Attributes": json_values | st.dictionaries(
        st.sampled_from(["ApproximateReceiveCount", "SentTimestamp", "Other"]),
        json_values | st.text(alphabet="0123456789 -x", max_size=25), max_size=3),
})
answers = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(message_like, max_size=4).map(lambda ms: json.dumps({"Messages": ms}).encode()),
    st.lists(st.fixed_dictionaries({}, optional={
        "Id": json_values, "Code": json_values, "Message": json_values,
        "SenderFault": json_values}), max_size=4).map(
        lambda fs: json.dumps({"Failed": fs}).encode()),
)


@settings(max_examples=400, deadline=None)
@given(answers)
def test_response_parsers_raise_only_storage_error(body: bytes) -> None:
    try:
        messages = parse_received(body)
    except StorageError:
        pass
    else:
        assert all(isinstance(m.body, str) and isinstance(m.receipt, str) and
                   isinstance(m.receive_count, int) for m in messages)
    try:
        failures = parse_batch_failures("DeleteMessageBatch", body)
    except StorageError:
        pass
    else:
        assert all(isinstance(f.id, str) and isinstance(f.sender_fault, bool) for f in failures)
    error = parse_error(action="X", status=400, body=body)
    assert isinstance(error, StorageError) and error.code


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_head_parser_raises_only_storage_error(head: bytes) -> None:
    try:
        status, _, headers = _parse_head(head)
    except StorageError:
        return
    assert 100 <= status <= 999 and all(k == k.lower() for k in headers)


async def test_rotating_credentials_are_read_on_every_call() -> None:
    # The shape ECS task-role credentials take: refreshable, and due for refresh
    # (expiry inside botocore's mandatory window) so every read fetches again.
    fetched = iter(range(1, 100))

    def fetch() -> dict[str, str]:
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        return {"access_key": f"AKID{next(fetched)}", "secret_key": "s", "token": "t",
                "expiry_time": expiry.isoformat()}

    creds = RefreshableCredentials.create_from_metadata(fetch(), fetch, "test")
    client = LeanSqsClient(region="us-east-1", credentials=creds)
    first = await client.request_bytes(url=URL, host_header="h", action="ReceiveMessage",
                                       body=b"{}")
    second = await client.request_bytes(url=URL, host_header="h", action="ReceiveMessage",
                                        body=b"{}")
    assert b"Credential=AKID2/" in first
    assert b"Credential=AKID3/" in second
