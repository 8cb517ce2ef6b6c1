"""The production policy as an SSM parameter: what every sender reads at start.

The text deployed is exactly the repo file, validated here at synth: a policy that
`quiver.policy` refuses never reaches a parameter. Senders read the parameter by
name (`quiver sender --config ssm:/quiver/policy`) and poll it; a new version
published by `cdk deploy` has its throttles, retry schedule and
`delivery.pipeline_next` applied by running senders without a restart (other
sections at the next restart).
"""

from __future__ import annotations

from aws_cdk import aws_ssm as ssm
from constructs import Construct

from quiver.policy import parse_policy

STANDARD_TIER_MAX_BYTES = 4096
ADVANCED_TIER_MAX_BYTES = 8192
# CloudFormation expands `{{resolve:...}}` anywhere in a template string; a policy
# containing it would be deployed with different text than the repo holds.
_DYNAMIC_REFERENCE = "{{resolve:"


def parameter_tier(text: str) -> ssm.ParameterTier:
    size = len(text.encode("utf-8"))
    if size > ADVANCED_TIER_MAX_BYTES:
        raise ValueError(
            f"the policy is {size} bytes; an SSM parameter holds at most "
            f"{ADVANCED_TIER_MAX_BYTES}: move DKIM keys and comments out of it"
        )
    if size > STANDARD_TIER_MAX_BYTES:
        return ssm.ParameterTier.ADVANCED
    return ssm.ParameterTier.STANDARD


class PolicyParameter(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        parameter_name: str,
        policy_text: str,
        origin: str = "policy",
    ) -> None:
        super().__init__(scope, construct_id)
        parse_policy(policy_text, origin=origin)  # raises PolicyError naming every problem
        if _DYNAMIC_REFERENCE in policy_text:
            raise ValueError(
                f"{origin}: contains '{_DYNAMIC_REFERENCE}', which CloudFormation would "
                "replace; remove it"
            )
        self.parameter = ssm.StringParameter(
            self, "Parameter",
            parameter_name=parameter_name,
            string_value=policy_text,
            tier=parameter_tier(policy_text),
            description="Quiver policy (TOML), deployed from policy/quiver.toml",
        )
