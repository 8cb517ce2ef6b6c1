"""moto's server as a child process, with the queues, buckets and table the CDK app creates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiver.devstack.processes import child_process_options, free_port, stop_process
from quiver.names import INBOUND_BOUNCE_PREFIX, INBOUND_FBL_PREFIX, resource_names
from quiver.settings import Deployment, local_deployment

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
# The outbound queue's redrive: a message that fails this often (a crash loop on
# it, not ordinary deferrals, which re-enqueue) moves to the DLQ.
MAX_RECEIVE_COUNT = 10
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "quiver-local", "AWS_SECRET_ACCESS_KEY": "quiver-local"}


@dataclass
class MotoServer:
    process: subprocess.Popen[bytes]
    endpoint: str
    log_path: Path

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


def start_moto(*, log_dir: Path, host: str = "127.0.0.1", port: int = 0) -> MotoServer:
    port = port or free_port(host)
    log_path = log_dir / "moto.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "quiver.devstack.moto_main", "-H", host, "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **FAKE_CREDENTIALS}, **child_process_options(),
    )
    log.close()
    endpoint = f"http://{host}:{port}"
    wait_for_moto(process, endpoint=endpoint, log_path=log_path)
    return MotoServer(process=process, endpoint=endpoint, log_path=log_path)


def wait_for_moto(process: subprocess.Popen[bytes], *, endpoint: str, log_path: Path) -> None:
    """Wait until moto's server answers; RuntimeError (and the process killed) if not."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}; see {log_path}")
        try:
            # Loopback http URL built here, never user input.
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1):  # noqa: S310
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    process.kill()
    process.wait(timeout=5)
    raise RuntimeError(f"moto server did not answer within 60 s; see {log_path}")


def aws_env(endpoint: str) -> dict[str, str]:
    """Environment for boto3 in a child process to use the local endpoint."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        **FAKE_CREDENTIALS,
    }


def session(endpoint: str) -> Any:
    import boto3

    return boto3.session.Session(
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )


def client(endpoint: str, service: str) -> Any:
    return session(endpoint).client(service, endpoint_url=endpoint)


def create_resources(endpoint: str, *, max_receive_count: int = MAX_RECEIVE_COUNT) -> Deployment:
    """Create (idempotently) every resource the sender and the export use.

    `max_receive_count` is the outbound queue's redrive limit; the deployment carries it
    to the sender as the CDK app does (a test lowers it to reach the limit quickly).
    """
    names = resource_names(account=ACCOUNT, region=REGION)
    sqs = client(endpoint, "sqs")
    s3 = client(endpoint, "s3")
    ddb = client(endpoint, "dynamodb")

    def queue(name: str, attributes: dict[str, str]) -> str:
        url: str = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        return url

    fourteen_days = str(14 * 86400)
    dlq_url = queue(names.outbound_dlq, {"MessageRetentionPeriod": fourteen_days})
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue(names.outbound_queue, {
        "MessageRetentionPeriod": str(4 * 86400),
        "VisibilityTimeout": "300",
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
        ),
    })
    events_dlq_url = queue(names.events_dlq, {"MessageRetentionPeriod": fourteen_days})
    events_dlq_arn = sqs.get_queue_attributes(
        QueueUrl=events_dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue(names.events_queue, {
        "VisibilityTimeout": "60",
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": events_dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
        ),
    })
    for bucket in (names.spill_bucket, names.events_bucket, names.inbound_bucket):
        s3.create_bucket(Bucket=bucket)
    # Inbound mail as in AWS (cdk/inbound_mail.py): each prefix of the inbound bucket
    # notifies its intake queue, which dead-letters what keeps failing.
    routes = []
    for name, dlq, prefix in ((names.bounce_queue, names.bounce_dlq, INBOUND_BOUNCE_PREFIX),
                              (names.fbl_queue, names.fbl_dlq, INBOUND_FBL_PREFIX)):
        intake_dlq_arn = sqs.get_queue_attributes(
            QueueUrl=queue(dlq, {"MessageRetentionPeriod": fourteen_days}),
            AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        intake_arn = sqs.get_queue_attributes(QueueUrl=queue(name, {
            "VisibilityTimeout": "60",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": intake_dlq_arn,
                                         "maxReceiveCount": str(MAX_RECEIVE_COUNT)}),
        }), AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        routes.append({"QueueArn": intake_arn, "Events": ["s3:ObjectCreated:*"],
                       "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}})
    s3.put_bucket_notification_configuration(
        Bucket=names.inbound_bucket, NotificationConfiguration={"QueueConfigurations": routes})
    existing = ddb.list_tables()["TableNames"]
    for table in (names.suppression_table, names.senders_table, names.finals_table,
                  names.controls_table, names.tenant_keys_table, names.idempotency_table):
        if table not in existing:
            ddb.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "sk", "KeyType": "RANGE"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
    return local_deployment(endpoint=endpoint, account=ACCOUNT, region=REGION,
                            outbound_max_receives=max_receive_count)
