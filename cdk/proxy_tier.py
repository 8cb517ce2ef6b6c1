"""The HAProxy egress tier: one EC2 node per policy node, owning its sources' addresses.

Each node has one network interface with the node's primary private IP (health
endpoint) and one secondary private IP per source placed on it; each secondary IP
is associated with that source's Elastic IP. The interface is a resource of its
own so the addresses and associations are independent of the instance. Those
addresses sit in the node's fixed block (quiver.proxy.blocks), an explicit subnet
CIDR reservation, so AWS never hands them to another interface, and the block
never needs to grow when a source is added (a reservation cannot change in place).

Resilience: termination protection; EC2 recovers a node whose host fails
(StatusCheckFailed_System) and reboots one whose OS stops answering
(StatusCheckFailed_Instance); HAProxy's log is shipped to CloudWatch Logs. The logical
IDs of the reservations, interfaces, associations and instances are pinned (a
refactor must not replace them: a replaced instance cannot take over an interface
at device index 0).

Rolling updates gated on health: a deploy that starts a node or restarts it (new
user data or instance type) waits, before it touches the next node, for that node to
report that HAProxy answers its health check, and stops and rolls back at the first
node that does not. The report cannot be `cfn-signal` with a creation policy: a node
has no public address on its primary IP, the VPC has no CloudFormation endpoint,
and its security group allows HTTPS only to the interface endpoints and S3. So each
node has a wait condition handle and a wait condition (`Ready<digest>`), and the
bootstrap PUTs its signal to the handle's presigned S3 URL through the S3 gateway
endpoint. A wait condition cannot be signalled twice, so its logical ID carries a
digest of what restarts the node (user data without the URL, instance type, image,
timeout): a change that restarts the node makes a new one, an unchanged node keeps
its own. Each instance depends on the wait conditions of every node before it in
(AZ, name) order, so a change rolls through the nodes one at a time.

Reachability: the frontends and the health port accept only the senders' security
group. Egress is the destination ports the policy allows (25) to anywhere, plus
HTTPS to the VPC's interface endpoints (Session Manager) and to S3 through its
gateway endpoint (the Amazon Linux package repositories are S3 buckets).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping

from aws_cdk import (
    Acknowledgment,
    CfnOutput,
    CfnWaitCondition,
    CfnWaitConditionHandle,
    Duration,
    Fn,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.deploy_checks import check_node_user_data, check_proxy_capacity
from cdk.logical_ids import logical_id_part, pin_logical_id
from cdk.network import Network
from proxy_tier.bootstrap import SIGNAL_URL_STAND_IN, render_user_data
from quiver.policy import Policy, ProxyNode
from quiver.proxy.blocks import node_block

DEFAULT_INSTANCE_TYPE = "c7g.large"
# Graviton families carry a `g` after the generation digit (c7g, m7gd, c6gn).
_ARM_FAMILY = re.compile(r"^[a-z]+\d+g")
# Resolved by EC2 when an instance launches, not by CloudFormation on each deploy:
# a newer AMI must never replace a node (and its fixed addresses) behind your back.
AL2023_IMAGE = {
    "arm64": "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
    "x86_64": "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
}
ROOT_VOLUME_GIB = 16
# A new node's bootstrap installs HAProxy (and the CloudWatch agent), waits for its
# addresses and the health check; ten minutes is ample, and a node that has not
# signalled by then is broken. A restarted node needs a fraction of it.
NODE_READY_TIMEOUT_S = 900
# Hex digits of the digest in a wait condition's logical ID: unique among one
# node's successive versions, short enough for CloudFormation's 255-character IDs.
READY_DIGEST_LENGTH = 12
HAPROXY_LOG_RETENTION = logs.RetentionDays.ONE_MONTH
# EC2's limit on user data, before base64.
USER_DATA_LIMIT = 16 * 1024
# Template linters expect `ami-...` in ImageId; `resolve:ssm:<public parameter>` is
# an EC2 RunInstances feature they do not model.
_IMAGE_ID_RULE = "E1152"
_IMAGE_ID_REASON = (
    "ImageId is 'resolve:ssm:<AL2023 public parameter>', resolved by EC2 at launch "
    "so that a new AMI never replaces a node holding fixed addresses"
)


def node_logical_id(node: str, what: str) -> str:
    """The pinned logical ID of one of a node's resources: EgressNode<Node><What>."""
    return f"EgressNode{logical_id_part(node)}{what}"


def every_boot(script: str) -> str:
    """MIME user data that runs `script` (the bootstrap, verbatim) at every boot.

    cloud-init re-reads user data at each boot but runs its scripts once per
    instance. A policy change that alters a node's config changes its user data,
    which CloudFormation applies by stopping and starting the instance: without
    this the node would come back with its old config. `scripts-user, always` is the
    cloud-config AWS documents for it; the bootstrap is idempotent, so every boot
    is safe (an unchanged config changes nothing).
    """
    boundary = "==QUIVER-EGRESS=="
    user_data = (
        f'Content-Type: multipart/mixed; boundary="{boundary}"\n'
        "MIME-Version: 1.0\n"
        "\n"
        f"--{boundary}\n"
        'Content-Type: text/cloud-config; charset="us-ascii"\n'
        "\n"
        "cloud_final_modules:\n"
        "- [scripts-user, always]\n"
        "\n"
        f"--{boundary}\n"
        'Content-Type: text/x-shellscript; charset="us-ascii"\n'
        "\n"
        f"{script}"
        f"\n--{boundary}--\n"
    )
    size = len(user_data.encode())
    if boundary in script or size > USER_DATA_LIMIT:
        raise ValueError(
            f"user data is {size} bytes (EC2 allows {USER_DATA_LIMIT}) or contains the MIME "
            "boundary: place fewer sources on this node"
        )
    return user_data


# What the bootstrap may take of the user data: the MIME wrapper takes the rest.
SCRIPT_ROOM = USER_DATA_LIMIT - len(every_boot("").encode())


def ready_digest(*, user_data: str, instance_type: str, image_id: str, timeout_s: int) -> str:
    """What restarts or replaces a node, hashed: it names the node's wait condition.

    `user_data` is rendered with the stand-in signal URL (the real one is the
    handle's, named by this digest). A change to any of these restarts the node, so
    it must meet a new wait condition; a change to none keeps the old one, which
    nothing would signal again.
    """
    material = json.dumps([user_data, instance_type, image_id, timeout_s])
    return hashlib.sha256(material.encode()).hexdigest()[:READY_DIGEST_LENGTH]


def rolling_order(policy: Policy) -> list[str]:
    """The nodes in the order a deploy restarts them: by AZ, then name."""
    nodes = policy.proxy.nodes
    return sorted(nodes, key=lambda name: (nodes[name].az, name))


def image_for(instance_type: str) -> str:
    return AL2023_IMAGE["arm64" if _ARM_FAMILY.match(instance_type) else "x86_64"]


class ProxyNodes(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        policy: Policy,
        network: Network,
        elastic_ips: Mapping[str, ec2.CfnEIP],
        sender_security_group: ec2.ISecurityGroup,
        instance_type: str = DEFAULT_INSTANCE_TYPE,
        image_id: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        proxy = policy.proxy
        subnets = network.proxy_subnets
        self._check_addresses(policy, subnets)
        check_proxy_capacity(policy, instance_type=instance_type)
        self.network = network
        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup",
            vpc=network.vpc,
            description="Quiver egress proxies: frontends and health from senders only",
            allow_all_outbound=False,
        )
        for port, what in ((proxy.frontend_port, "frontends"), (proxy.health_port, "health")):
            self.security_group.connections.allow_from(
                sender_security_group, ec2.Port.tcp(port), f"senders to the proxy {what}",
            )
        for port in proxy.allowed_ports:
            self.security_group.add_egress_rule(
                ec2.Peer.any_ipv4(), ec2.Port.tcp(port), f"SMTP to receiving MXes (port {port})",
            )
        self.security_group.connections.allow_to(
            network.endpoint_security_group, ec2.Port.tcp(443), "Session Manager endpoints",
        )
        self.security_group.add_egress_rule(
            network.s3_prefix_list, ec2.Port.tcp(443), "Amazon Linux repositories (S3)",
        )
        self.role = iam.Role(
            self, "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Quiver egress node: Session Manager access for operators, nothing else",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore"),
            ],
        )
        # Named at synth: the nodes' bootstrap carries the name as plain text.
        self.log_group = logs.LogGroup(
            self, "HaproxyLogs", retention=HAPROXY_LOG_RETENTION,
            log_group_name=f"/quiver/{Stack.of(self).stack_name}/egress-haproxy",
            removal_policy=RemovalPolicy.DESTROY,
        )
        # The CloudWatch agent writes the nodes' HAProxy log here and nowhere else.
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[self.log_group.log_group_arn, f"{self.log_group.log_group_arn}:*"],
        ))
        profile = iam.CfnInstanceProfile(self, "InstanceProfile", roles=[self.role.role_name])
        if image_id is None:
            Validations.of(self).acknowledge(Acknowledgment(
                id=f"CloudFormation-Validate::{_IMAGE_ID_RULE}", reason=_IMAGE_ID_REASON,
            ))
        self.instances: dict[str, ec2.CfnInstance] = {}
        self.interfaces: dict[str, ec2.CfnNetworkInterface] = {}
        self.ready: dict[str, CfnWaitCondition] = {}
        for name in rolling_order(policy):
            node = proxy.nodes[name]
            earlier = list(self.ready.values())
            instance = self._node(
                name=name, node=node, policy=policy, subnet=subnets[node.az],
                elastic_ips=elastic_ips,
                instance_type=instance_type, image_id=image_id or image_for(instance_type),
                profile=profile,
            )
            # One node at a time, each only once the ones before it serve: a change
            # never takes every sending address down at once, and stops at the first
            # node that does not come back healthy. Every earlier node, not just the
            # previous one: an unchanged node in between must not break the chain.
            for ready in earlier:
                instance.add_resource_dependency(ready)

    def _node(
        self,
        *,
        name: str,
        node: ProxyNode,
        policy: Policy,
        subnet: ec2.ISubnet,
        elastic_ips: Mapping[str, ec2.CfnEIP],
        instance_type: str,
        image_id: str,
        profile: iam.CfnInstanceProfile,
    ) -> ec2.CfnInstance:
        part = logical_id_part(name)
        sources = sorted(
            (s for s in policy.sources.values() if s.node == name), key=lambda s: s.name,
        )
        reservation = ec2.CfnSubnetCidrReservation(
            self, f"{part}AddressReservation",
            subnet_id=subnet.subnet_id,
            cidr=str(node_block(node.address)),
            reservation_type="explicit",
            description=f"Fixed address block of Quiver egress node {name}",
        )
        pin_logical_id(reservation, node_logical_id(name, "Reservation"))
        interface = ec2.CfnNetworkInterface(
            self, f"{part}Interface",
            subnet_id=subnet.subnet_id,
            description=f"Quiver egress node {name}: primary + one address per source",
            group_set=[self.security_group.security_group_id],
            private_ip_addresses=[
                ec2.CfnNetworkInterface.PrivateIpAddressSpecificationProperty(
                    private_ip_address=node.address, primary=True,
                ),
                *(
                    ec2.CfnNetworkInterface.PrivateIpAddressSpecificationProperty(
                        private_ip_address=s.local_ip, primary=False,
                    )
                    for s in sources if s.local_ip
                ),
            ],
            # quiver:node: how `quiver proxy failover` finds a node's interface.
            tags=[{"key": "Name", "value": f"quiver-{name}"},
                  {"key": "quiver:node", "value": name}],
        )
        pin_logical_id(interface, node_logical_id(name, "Interface"))
        interface.add_resource_dependency(reservation)
        for source in sources:
            association = ec2.CfnEIPAssociation(
                self, f"{part}{logical_id_part(source.name)}Association",
                allocation_id=elastic_ips[source.name].attr_allocation_id,
                network_interface_id=interface.ref,
                private_ip_address=source.local_ip,
            )
            pin_logical_id(association, node_logical_id(
                name, f"{logical_id_part(source.name)}Association"))
            # AssociateAddress fails with Gateway.NotAttached before the VPC's internet
            # gateway is attached, and nothing else orders the two.
            association.add_dependency(self.network.gateway_attachment)
        log_group = f"/quiver/{Stack.of(self).stack_name}/egress-haproxy"
        planned = check_node_user_data(name, lambda: every_boot(render_user_data(
            policy, name, signal_url=SIGNAL_URL_STAND_IN, log_group=log_group,
            room=SCRIPT_ROOM)))
        digest = ready_digest(user_data=planned, instance_type=instance_type,
                              image_id=image_id, timeout_s=NODE_READY_TIMEOUT_S)
        handle = CfnWaitConditionHandle(self, f"{part}Ready{digest}Handle")
        pin_logical_id(handle, node_logical_id(name, f"Ready{digest}Handle"))
        user_data = render_user_data(policy, name, signal_url=handle.ref, log_group=log_group,
                                     room=SCRIPT_ROOM)
        instance = ec2.CfnInstance(
            self, f"{part}Instance",
            image_id=image_id,
            instance_type=instance_type,
            iam_instance_profile=profile.ref,
            network_interfaces=[ec2.CfnInstance.NetworkInterfaceProperty(
                device_index="0", network_interface_id=interface.ref,
            )],
            metadata_options=ec2.CfnInstance.MetadataOptionsProperty(
                http_tokens="required",
                http_endpoint="enabled",
                http_put_response_hop_limit=1,
            ),
            block_device_mappings=[ec2.CfnInstance.BlockDeviceMappingProperty(
                device_name="/dev/xvda",
                ebs=ec2.CfnInstance.EbsProperty(
                    volume_type="gp3", volume_size=ROOT_VOLUME_GIB,
                    encrypted=True, delete_on_termination=True,
                ),
            )],
            # One-minute metrics: the status-check alarm reacts in minutes, not tens.
            monitoring=True,
            # A node owns sending addresses: terminating it by mistake takes them off
            # the air until a deploy recreates it.
            disable_api_termination=True,
            user_data=Fn.base64(every_boot(user_data)),
            tags=[
                {"key": "Name", "value": f"quiver-{name}"},
                {"key": "quiver:node", "value": name},
            ],
        )
        pin_logical_id(instance, node_logical_id(name, "Instance"))
        self.ready[name] = self._ready_condition(name, digest, handle, instance)
        # The first boot installs its packages from S3 through the gateway endpoint's
        # routes; without them `dnf install` fails and the node never serves.
        instance.add_dependency(self.network.s3_endpoint)
        self._status_actions(name, instance)
        if image_id.startswith("resolve:ssm:"):
            instance.add_metadata("cfn-lint", {"config": {
                "ignore_checks": [_IMAGE_ID_RULE],
                "ignore_reasons": {_IMAGE_ID_RULE: _IMAGE_ID_REASON},
            }})
        self.instances[name] = instance
        self.interfaces[name] = interface
        CfnOutput(self, f"{part}InstanceId", value=instance.ref,
                  description=f"Egress node {name}: `aws ssm start-session --target <id>`")
        return instance

    def _ready_condition(
        self, name: str, digest: str, handle: CfnWaitConditionHandle, instance: ec2.CfnInstance,
    ) -> CfnWaitCondition:
        """The wait condition a deploy holds at until node `name` signals through its
        handle. It starts after the instance has (re)started: a signal the bootstrap
        sent before it existed is already in the handle's S3 object and counts."""
        ready = CfnWaitCondition(
            self, f"{logical_id_part(name)}Ready{digest}",
            handle=handle.ref, count=1, timeout=str(NODE_READY_TIMEOUT_S),
        )
        pin_logical_id(ready, node_logical_id(name, f"Ready{digest}"))
        ready.add_resource_dependency(instance)
        return ready

    def _status_actions(self, name: str, instance: ec2.CfnInstance) -> None:
        """EC2 acts on its own status checks: recover onto new hardware when the host
        fails (same instance ID, interface and addresses), reboot when the OS stops
        answering. Paging stays with the observability alarms."""
        for metric, action, what in (
            ("StatusCheckFailed_System", cw_actions.Ec2InstanceAction.RECOVER, "Recover"),
            ("StatusCheckFailed_Instance", cw_actions.Ec2InstanceAction.REBOOT, "Reboot"),
        ):
            alarm = cw.Metric(
                namespace="AWS/EC2", metric_name=metric,
                dimensions_map={"InstanceId": instance.ref},
                period=Duration.minutes(1), statistic="Maximum",
            ).create_alarm(
                self, f"{logical_id_part(name)}{what}",
                alarm_description=f"egress node {name}: {metric}; EC2 {what.lower()}s it",
                threshold=1, evaluation_periods=2, datapoints_to_alarm=2,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                # Missing data is a stopped node: an action would only fight an operator.
                treat_missing_data=cw.TreatMissingData.MISSING,
            )
            alarm.add_alarm_action(cw_actions.Ec2Action(action))
            pin_logical_id(alarm, node_logical_id(name, what))

    @staticmethod
    def _check_addresses(policy: Policy, subnets: Mapping[str, ec2.ISubnet]) -> None:
        problems: list[str] = []
        for name, node in sorted(policy.proxy.nodes.items()):
            subnet = subnets.get(node.az)
            if subnet is None:
                problems.append(f"proxy.nodes.{name}.az: the VPC has no subnet in {node.az}")
                continue
            cidr = ipaddress.ip_network(subnet.ipv4_cidr_block)
            placed = [(f"proxy.nodes.{name}.address", node.address)] + [
                (f"sources.{s.name}.local_ip", s.local_ip)
                for s in policy.sources.values() if s.node == name and s.local_ip
            ]
            for path, address in placed:
                ip = ipaddress.ip_address(address)
                # AWS keeps the first four addresses and the last one of every subnet.
                offset = int(ip) - int(cidr.network_address)
                if ip not in cidr:
                    problems.append(f"{path}: {address} is outside {node.az}'s subnet {cidr}")
                elif offset < 4 or ip == cidr.broadcast_address:
                    problems.append(f"{path}: {address} is reserved by AWS in subnet {cidr}")
        if problems:
            raise ValueError(
                "policy addresses do not fit the VPC's proxy subnets:\n  " + "\n  ".join(problems)
            )
