"""The HTTP injection API: API Gateway's HTTP API in front of the ingress Lambda.

Why an HTTP API, not a function URL or a REST API: a function URL has one auth type
for the whole URL, and the API takes both a tenant's Bearer key (checked by the
function) and SigV4 (checked by API Gateway's IAM authorizer, on its own route);
the HTTP API gives each route its own, with a stage throttle and access logs, at a
third of a REST API's price per request. What a REST API adds (usage plans, request
models) the function does per message already.

Routes:
- `POST /v1/messages`: no API Gateway authorizer; the function verifies the tenant
  key (`Authorization: Bearer`) against the tenant keys table before reading the body.
- `POST /iam/v1/messages`: the IAM authorizer; the tenant is the `X-Quiver-Tenant`
  header, which policy `tenants.<name>.iam_roles` must allow the caller's role.

The role sends to the outbound queue, puts spilled bodies under spill/, reads key
items one at a time, claims and settles its replay records, and reads the policy
object. Alarms: any 5xx (the function failed, or API Gateway could not reach it),
and a run of 4xx (a client with a revoked key or a broken batch, sending on).
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Duration
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.event_export import POWERTOOLS_LAYER_VERSION, powertools_layer, quiver_function
from cdk.nag import acknowledge, acknowledge_lambda_logging, object_wildcard
from cdk.policy_object import PolicyObject
from quiver.ingress_http.service import IAM_PATH, PATH
from quiver.settings import (
    ENV_IDEMPOTENCY_TABLE,
    ENV_OUTBOUND_QUEUE_URL,
    ENV_POLICY_SOURCE,
    ENV_SPILL_BUCKET,
    ENV_TENANT_KEYS_TABLE,
)

# The function imports it to validate against the OpenAPI document (pure Python).
VENDORED = ("fastjsonschema",)
# API Gateway gives an integration 30 s; the replay lease (120 s) outlasts this.
TIMEOUT = Duration.seconds(29)
# A 500-message batch is held whole (bodies, envelopes) while it is enqueued.
MEMORY_MB = 1024
# Batches in flight at once, at most: 100 x 500 messages is far above what the
# senders drain, and a flood beyond it is throttled (429) instead of scaling the bill.
RESERVED_CONCURRENCY = 100
THROTTLE_RATE = 200  # requests per second across the stage
THROTTLE_BURST = 400
# 4xx in five minutes, three periods running: a client sending on with a revoked key
# or a batch it never fixes. One refused request is the client's business.
CLIENT_ERRORS_PER_5_MIN = 100


class HttpIngress(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code_dir: Path,
        outbound_queue: sqs.IQueue,
        spill_bucket: s3.IBucket,
        tenant_keys_table: dynamodb.ITable,
        idempotency_table: dynamodb.ITable,
        policy_object: PolicyObject,
        reserved_concurrency: int = RESERVED_CONCURRENCY,
        powertools_layer_version: int = POWERTOOLS_LAYER_VERSION,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        self.function = quiver_function(
            self, "",
            description="Quiver HTTP ingress: POST /v1/messages batches onto the outbound queue",
            function="ingress_http", code_dir=code_dir,
            layer=powertools_layer(self, powertools_layer_version),
            timeout=TIMEOUT, memory_size=MEMORY_MB, reserved_concurrency=reserved_concurrency,
            log_retention=log_retention,
            environment={
                ENV_OUTBOUND_QUEUE_URL: outbound_queue.queue_url,
                ENV_SPILL_BUCKET: spill_bucket.bucket_name,
                ENV_POLICY_SOURCE: policy_object.spec,
                ENV_TENANT_KEYS_TABLE: tenant_keys_table.table_name,
                ENV_IDEMPOTENCY_TABLE: idempotency_table.table_name,
                "POWERTOOLS_SERVICE_NAME": "ingress-http",
            },
        )
        acknowledge_lambda_logging(self.function)
        for statement in (
            iam.PolicyStatement(sid="Enqueue", actions=["sqs:SendMessage"],
                                resources=[outbound_queue.queue_arn]),
            iam.PolicyStatement(sid="SpillBodies", actions=["s3:PutObject"],
                                resources=[spill_bucket.arn_for_objects("spill/*")]),
            iam.PolicyStatement(sid="VerifyTenantKeys", actions=["dynamodb:GetItem"],
                                resources=[tenant_keys_table.table_arn]),
            iam.PolicyStatement(
                sid="ReplayRecords",
                actions=["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem",
                         "dynamodb:DeleteItem"],
                resources=[idempotency_table.table_arn]),
            iam.PolicyStatement(sid="ReadPolicy", actions=["s3:GetObject"],
                                resources=[policy_object.object_arn]),
        ):
            self.function.add_to_role_policy(statement)
        assert self.function.role is not None
        acknowledge(self.function.role, object_wildcard(spill_bucket, "spill/*"),
                    "Spilled bodies are keyed by date and message id under spill/: the "
                    "grant is PutObject on that prefix.")

        access_logs = logs.LogGroup(self, "AccessLogs", retention=log_retention)
        self.api = apigw.HttpApi(
            self, "Api", description="Quiver HTTP injection API", create_default_stage=False)
        self.stage = self._stage(access_logs)
        integration = integrations.HttpLambdaIntegration("Ingress", self.function)
        key_route = self.api.add_routes(path=PATH, methods=[apigw.HttpMethod.POST],
                                        integration=integration)
        self.api.add_routes(path=IAM_PATH, methods=[apigw.HttpMethod.POST],
                            integration=integration,
                            authorizer=authorizers.HttpIamAuthorizer())
        for route in key_route:
            acknowledge(route, "APIG4", "The function verifies the tenant's Bearer key "
                        "(a hash in the tenant keys table) before it reads the body; the "
                        "SigV4 route has API Gateway's IAM authorizer.")
        self.server_errors = cloudwatch.Alarm(
            self, "ServerErrors",
            alarm_description="The HTTP ingress answered 5xx: the function failed or "
            "could not be reached; clients retry, check the function's logs",
            metric=self.api.metric_server_error(period=Duration.minutes(5),
                                                statistic="Sum"),
            threshold=1, evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
        self.client_errors = cloudwatch.Alarm(
            self, "ClientErrors",
            alarm_description="The HTTP ingress refused many requests (4xx) for 15 "
            "minutes: a client with a revoked key, or one sending broken batches",
            metric=self.api.metric_client_error(period=Duration.minutes(5),
                                                statistic="Sum"),
            threshold=CLIENT_ERRORS_PER_5_MIN, evaluation_periods=3,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
        CfnOutput(self, "Url", value=f"{self.api.api_endpoint}{PATH}",
                  description="POST batches here with a tenant key "
                  "(`quiver keys create --tenant T`)")

    def _stage(self, access_logs: logs.LogGroup) -> apigw.HttpStage:
        stage = self.api.add_stage(
            "Stage", stage_name="$default", auto_deploy=True,
            throttle=apigw.ThrottleSettings(rate_limit=THROTTLE_RATE,
                                            burst_limit=THROTTLE_BURST))
        cfn = stage.node.default_child
        assert isinstance(cfn, apigw.CfnStage)
        cfn.access_log_settings = apigw.CfnStage.AccessLogSettingsProperty(
            destination_arn=access_logs.log_group_arn,
            format='{"requestId":"$context.requestId","ip":"$context.identity.sourceIp",'
                   '"route":"$context.routeKey","status":"$context.status",'
                   '"caller":"$context.identity.userArn",'
                   '"latency":"$context.integrationLatency"}')
        return stage
