"""The VPC: public subnets for the proxy tier, isolated subnets for senders, endpoints.

Senders have no route to the internet at all (no NAT): mail leaves only through the
proxy nodes, and AWS APIs are reached through VPC endpoints, so sender traffic to
SQS, S3, DynamoDB, SSM, Secrets Manager, ECR and CloudWatch Logs never crosses a NAT
or the internet. The public subnets hold only the proxy nodes; nothing there gets a
public address by default: each sending address is an Elastic IP associated on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

PROXY_SUBNET_MASK = 24
SENDER_SUBNET_MASK = 20

# (construct id, service) of the interface endpoints. ssmmessages/ec2messages carry
# Session Manager sessions to the proxy nodes, which have no SSH and no public address
# on their primary interface.
_INTERFACE_ENDPOINTS: tuple[tuple[str, ec2.InterfaceVpcEndpointAwsService], ...] = (
    ("Sqs", ec2.InterfaceVpcEndpointAwsService.SQS),
    ("Logs", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS),
    ("Ssm", ec2.InterfaceVpcEndpointAwsService.SSM),
    ("SsmMessages", ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES),
    ("Ec2Messages", ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES),
    ("SecretsManager", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
    ("EcrApi", ec2.InterfaceVpcEndpointAwsService.ECR),
    ("EcrDocker", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER),
)


class Network(Construct):
    """A VPC over explicit AZs, with endpoints for every AWS API the system calls."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cidr: str,
        availability_zones: Sequence[str],
        by_id: bool = False,
        flow_log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        isolated = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        public = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
        flow_logs = logs.LogGroup(
            self, "RejectedFlows",
            retention=flow_log_retention,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.vpc = ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(cidr),
            availability_zones=list(availability_zones),
            nat_gateways=0,
            # The order fixes the CIDR plan: public /24s first (x.x.0.0, .1.0, .2.0 in AZ
            # order), which is where the policy's proxy addresses live.
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="proxies", subnet_type=ec2.SubnetType.PUBLIC,
                    cidr_mask=PROXY_SUBNET_MASK, map_public_ip_on_launch=False,
                ),
                ec2.SubnetConfiguration(
                    name="senders", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED,
                    cidr_mask=SENDER_SUBNET_MASK,
                ),
            ],
            gateway_endpoints={
                # Proxy nodes install packages from the Amazon Linux repositories,
                # which are S3 buckets: their subnets get the S3 route too.
                "S3": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[isolated, public],
                ),
                "DynamoDb": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.DYNAMODB, subnets=[isolated],
                ),
            },
            flow_logs={
                "Rejected": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                    traffic_type=ec2.FlowLogTrafficType.REJECT,
                ),
            },
            restrict_default_security_group=True,
        )
        if by_id:
            self._place_subnets_by_zone_id()
        # What the proxy tier waits for: an Elastic IP cannot be associated before the
        # internet gateway is attached (Gateway.NotAttached), and a node's first boot
        # installs HAProxy from S3 through the gateway endpoint's routes.
        attachment = self.vpc.node.find_child("VPCGW")
        assert isinstance(attachment, ec2.CfnVPCGatewayAttachment)
        self.gateway_attachment = attachment
        s3_endpoint = self.vpc.node.find_child("S3").node.default_child
        assert isinstance(s3_endpoint, ec2.CfnVPCEndpoint)
        self.s3_endpoint = s3_endpoint
        self.endpoint_security_group = ec2.SecurityGroup(
            self, "EndpointSecurityGroup",
            vpc=self.vpc,
            description="Quiver interface endpoints: HTTPS from inside the VPC",
            allow_all_outbound=False,
        )
        self.endpoint_security_group.add_ingress_rule(
            ec2.Peer.ipv4(self.vpc.vpc_cidr_block), ec2.Port.tcp(443),
            "HTTPS to AWS APIs from senders and proxy nodes",
        )
        for endpoint_id, service in _INTERFACE_ENDPOINTS:
            self.vpc.add_interface_endpoint(
                endpoint_id,
                service=service,
                subnets=isolated,
                security_groups=[self.endpoint_security_group],
                private_dns_enabled=True,
                open=False,
            )
        # Security-group egress to a gateway endpoint needs the service's managed prefix
        # list ID, which differs per region and has no CloudFormation attribute; it is
        # read at deploy time (never at synth, which stays offline).
        self.s3_prefix_list = self._prefix_list("S3PrefixList", "s3")
        self.dynamodb_prefix_list = self._prefix_list("DynamoDbPrefixList", "dynamodb")

    def _place_subnets_by_zone_id(self) -> None:
        """The VPC was laid out over AZ IDs as if they were names (the CIDR plan and the
        subnet per zone are the same); CloudFormation takes them as AvailabilityZoneId,
        which maps to this account's AZ name at deploy time, never at synth."""
        for subnet in (*self.vpc.public_subnets, *self.vpc.isolated_subnets):
            cfn = subnet.node.default_child
            if not isinstance(cfn, ec2.CfnSubnet):
                raise TypeError(f"{subnet.node.path}: expected a CfnSubnet")
            cfn.add_property_override("AvailabilityZoneId", subnet.availability_zone)
            cfn.add_property_deletion_override("AvailabilityZone")

    @property
    def proxy_subnets(self) -> dict[str, ec2.ISubnet]:
        """The public subnet of each AZ, by the AZ name or ID the policy gives."""
        return {subnet.availability_zone: subnet for subnet in self.vpc.public_subnets}

    @property
    def sender_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)

    def _prefix_list(self, construct_id: str, service: str) -> ec2.IPeer:
        call = cr.AwsSdkCall(
            service="EC2",
            action="describeManagedPrefixLists",
            parameters={
                "Filters": [
                    {"Name": "prefix-list-name",
                     "Values": [f"com.amazonaws.{Aws.REGION}.{service}"]},
                ],
            },
            physical_resource_id=cr.PhysicalResourceId.of(f"{service}-prefix-list"),
            output_paths=["PrefixLists.0.PrefixListId"],
        )
        lookup = cr.AwsCustomResource(
            self, construct_id,
            on_create=call,
            on_update=call,
            # DescribeManagedPrefixLists has no resource-level permissions.
            policy=cr.AwsCustomResourcePolicy.from_statements([
                iam.PolicyStatement(actions=["ec2:DescribeManagedPrefixLists"], resources=["*"]),
            ]),
            install_latest_aws_sdk=False,
        )
        return ec2.Peer.prefix_list(lookup.get_response_field("PrefixLists.0.PrefixListId"))
