"""The export's record function under Powertools' partial batch processing, as the
Lambda and the local pump run it: a bad record fails alone, a re-run writes the
same objects, and a final event claimed by another batch is dropped."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

from quiver.envelope import Envelope
from quiver.events import make_event, pack_batches
from quiver.export import Exporter, read_object
from quiver.storage.memory import MemoryFinals

ENV = Envelope(id="m-1", sender="a@example.com", recipients=("b@example.org",), raw=b"x")


class RecordingS3:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[(Bucket, Key)] = Body


def sqs_event(bodies: list[str]) -> dict[str, Any]:
    return {"Records": [
        {"messageId": f"q{i}", "receiptHandle": f"r{i}", "body": body, "attributes": {},
         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:events", "awsRegion": "us-east-1"}
        for i, body in enumerate(bodies)]}


def run(exporter: Exporter, bodies: list[str]) -> dict[str, Any]:
    processor = BatchProcessor(event_type=EventType.SQS)
    return dict(process_partial_response(
        event=sqs_event(bodies), record_handler=exporter.export_record, processor=processor))


def delivered(at: float = 1_790_000_000.0) -> dict[str, Any]:
    return make_event("delivered", envelope=ENV, rcpt="b@example.org", attempt=1, pool="p",
                      at=at)


def test_a_bad_record_fails_alone_and_reruns_write_the_same_objects() -> None:
    s3, finals = RecordingS3(), MemoryFinals()
    exporter = Exporter(s3=s3, bucket="events", finals=finals)
    (_, good), = pack_batches([delivered()])
    assert run(exporter, ["not an event batch", good]) == {
        "batchItemFailures": [{"itemIdentifier": "q0"}]}
    written = dict(s3.objects)
    assert [read_object(data) for data in written.values()] == [[delivered()]]
    assert run(exporter, [good]) == {"batchItemFailures": []}
    assert s3.objects == written  # same keys, same bytes


def test_a_final_event_claimed_by_another_batch_is_dropped() -> None:
    s3, finals = RecordingS3(), MemoryFinals()
    exporter = Exporter(s3=s3, bucket="events", finals=finals)
    (_, first), = pack_batches([delivered()])
    (_, copy), = pack_batches([delivered(at=1_790_000_100.0)])  # a redelivery's copy
    run(exporter, [first, copy])
    assert [record for data in s3.objects.values() for record in read_object(data)] == [
        delivered()]


def test_without_a_finals_store_every_record_is_written() -> None:
    s3 = RecordingS3()
    exporter = Exporter(s3=s3, bucket="events", finals=None)
    (_, first), = pack_batches([delivered()])
    (_, copy), = pack_batches([delivered(at=1_790_000_100.0)])
    run(exporter, [first, copy])
    assert len(s3.objects) == 2
