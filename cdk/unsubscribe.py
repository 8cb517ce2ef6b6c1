"""The one-click unsubscribe endpoint (RFC 8058): a Lambda behind a function URL.

Auth NONE is what one-click requires: the mailbox provider POSTs to the URL in
List-Unsubscribe on the user's behalf, with no credentials of ours. It is safe
because the URL does nothing by itself:
- every action needs a token signed with the return-path key ring (128-bit HMAC);
  a forged or edited one is refused before anything is read or written;
- GET only shows a confirmation page; only POST with List-Unsubscribe=One-Click
  suppresses, and only the address and tenant its token names;
- reserved concurrency caps what a flood of requests can cost or consume (the
  tables and queue it writes to see at most that many writers).
The role writes suppression entries (PutItem, and DeleteItem to take back one
whose event could not be sent), sends to the events queue, and reads the key
ring's one secret.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import ArnFormat, CfnOutput, Duration, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.event_export import POWERTOOLS_LAYER_VERSION, powertools_layer, quiver_function
from cdk.nag import acknowledge_lambda_logging
from quiver.settings import ENV_EVENTS_QUEUE_URL, ENV_KEY_RING_SECRET, ENV_SUPPRESSION_TABLE

# Requests in flight at once, at most: one-click POSTs come one per recipient who
# clicks, and a flood beyond this is throttled (429) instead of scaling the bill.
RESERVED_CONCURRENCY = 10
TIMEOUT = Duration.seconds(10)


class Unsubscribe(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code_dir: Path,
        events_queue: sqs.IQueue,
        suppression_table: dynamodb.ITable,
        key_ring_secret: str,
        reserved_concurrency: int = RESERVED_CONCURRENCY,
        powertools_layer_version: int = POWERTOOLS_LAYER_VERSION,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        self.function = quiver_function(
            self, "",
            description="Quiver one-click unsubscribe (RFC 8058): GET confirms, POST suppresses",
            function="unsubscribe", code_dir=code_dir,
            layer=powertools_layer(self, powertools_layer_version),
            timeout=TIMEOUT, memory_size=256, reserved_concurrency=reserved_concurrency,
            log_retention=log_retention,
            environment={
                ENV_EVENTS_QUEUE_URL: events_queue.queue_url,
                ENV_SUPPRESSION_TABLE: suppression_table.table_name,
                ENV_KEY_RING_SECRET: key_ring_secret,
                "POWERTOOLS_SERVICE_NAME": "unsubscribe",
            },
        )
        acknowledge_lambda_logging(self.function)
        self.url = self.function.add_function_url(auth_type=lambda_.FunctionUrlAuthType.NONE)
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="SuppressUnsubscribed",
            actions=["dynamodb:PutItem", "dynamodb:DeleteItem"],
            resources=[suppression_table.table_arn],
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="SendUnsubscribedEvents",
            actions=["sqs:SendMessage"],
            resources=[events_queue.queue_arn],
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="ReadKeyRing",
            actions=["secretsmanager:GetSecretValue"],
            # Secrets Manager appends "-" and six random characters to a secret's name.
            resources=[Stack.of(self).format_arn(
                service="secretsmanager", resource="secret",
                resource_name=f"{key_ring_secret}-??????",
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )],
        ))
        CfnOutput(self, "Url", value=self.url.url,
                  description="One-click unsubscribe endpoint: policy unsubscribe url is "
                  "this plus u/")
