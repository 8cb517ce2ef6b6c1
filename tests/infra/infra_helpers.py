"""Helpers for the infra tests: building the app and reading synthesized templates."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import App

from cdk.stacks import QuiverStacks, add_quiver_stacks

ROOT = Path(__file__).resolve().parents[2]
POLICY_PATH = ROOT / "policy" / "quiver.toml"
CDK_CLI = ROOT / "node_modules" / ".bin" / "cdk"
CFN_LINT_CONFIG = ROOT / "cdk" / "cfn-lint.yaml"


def cdk_context() -> dict[str, Any]:
    """The context `cdk synth` uses (feature flags included), from cdk.json."""
    context: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]
    return context


def build(policy_path: Path, outdir: Path, **kwargs: Any) -> QuiverStacks:
    app = App(context=cdk_context(), outdir=str(outdir))
    return add_quiver_stacks(app, policy_path=policy_path, repo_root=ROOT, **kwargs)


@dataclass(frozen=True)
class CliSynth:
    outdir: Path
    # Why synth ran with the network reachable (no namespace allowed here), or None.
    online_because: str | None


def without_network() -> tuple[list[str], str | None]:
    """A command prefix that runs in a network namespace with no usable interface.

    `unshare -n` needs root (or CAP_SYS_ADMIN); `-rn` also maps the user to root in a
    new user namespace, which unprivileged users may do where the kernel allows it.
    Returns ([], why) when neither is permitted here.
    """
    if not shutil.which("unshare"):
        return [], "no `unshare` (util-linux) to run synth in a network namespace"
    errors = []
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return prefix, None
        errors.append(f"{' '.join(prefix)}: {probe.stderr.strip() or probe.returncode}")
    return [], "no network namespace allowed here (" + "; ".join(errors) + ")"


def resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    """The template's resources of one type, by logical ID."""
    return {k: r for k, r in template["Resources"].items() if r["Type"] == type_}


def only(template: dict[str, Any], type_: str) -> tuple[str, dict[str, Any]]:
    """The single resource of a type: (logical ID, properties)."""
    found = resources(template, type_)
    assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
    ((logical_id, resource),) = found.items()
    return logical_id, resource.get("Properties", {})


# A permissions policy is an identity policy (what a role may do: AWS::IAM::Policy, a
# role's inline Policies) or a resource policy (who may do what to the resource it is
# attached to: bucket, queue, topic policies; a key's KeyPolicy). A trust policy
# (AssumeRolePolicyDocument) says who may become a role; trust_statements() reads those.
TRUST_POLICY = "AssumeRolePolicyDocument"
# Resource policy types that are resources of their own: the property naming what they
# govern. A policy embedded in the resource it governs (KeyPolicy...) governs itself.
GOVERNED_BY = {
    "AWS::S3::BucketPolicy": "Bucket",
    "AWS::SQS::QueuePolicy": "Queues",
    "AWS::SNS::TopicPolicy": "Topics",
}


def policy_documents(template: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(logical ID, property, document) for every policy document in the template.

    Found by walking every resource's properties for an object with a Statement, not
    by listing resource types, so a new kind of policy is checked from the day it
    appears instead of silently skipped.
    """
    found: list[tuple[str, str, dict[str, Any]]] = []

    def walk(value: Any, where: str, logical_id: str) -> None:
        if isinstance(value, str) and value.lstrip().startswith("{") and "Statement" in value:
            try:
                value = json.loads(value)  # a policy given as JSON text
            except ValueError:
                return
        if isinstance(value, dict):
            if "Statement" in value:
                found.append((logical_id, where, value))
                return
            for key, inner in value.items():
                walk(inner, key if not where else f"{where}.{key}", logical_id)
        elif isinstance(value, list):
            for i, inner in enumerate(value):
                walk(inner, f"{where}[{i}]", logical_id)

    for logical_id, resource in template["Resources"].items():
        walk(resource.get("Properties", {}), "", logical_id)
    return found


def statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every permissions statement (identity and resource policies), with its logical ID."""
    return [(logical_id, statement)
            for logical_id, where, document in policy_documents(template)
            if where != TRUST_POLICY
            for statement in as_list(document["Statement"])]


def trust_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every role's trust statements (who may assume it), with the role's logical ID."""
    return [(logical_id, statement)
            for logical_id, where, document in policy_documents(template)
            if where == TRUST_POLICY
            for statement in as_list(document["Statement"])]


@dataclass(frozen=True)
class ResourcePolicy:
    logical_id: str
    type: str
    governs: tuple[str, ...]  # logical IDs of the resources it is attached to
    statements: tuple[dict[str, Any], ...]


def resource_policies(template: dict[str, Any]) -> list[ResourcePolicy]:
    """Every policy attached to a resource rather than to a role (any non-IAM type)."""
    found = []
    for logical_id, where, document in policy_documents(template):
        kind = template["Resources"][logical_id]["Type"]
        if kind.startswith("AWS::IAM::"):
            continue
        props = template["Resources"][logical_id].get("Properties", {})
        if kind in GOVERNED_BY:
            governs = tuple(ref_target(r) for r in as_list(props[GOVERNED_BY[kind]]))
        else:
            governs = (logical_id,)
        found.append(ResourcePolicy(logical_id, kind, governs,
                                    tuple(as_list(document["Statement"]))))
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def render(value: Any) -> Any:
    """Collapse Ref, Fn::Join, Fn::Sub, Fn::GetAtt, Fn::GetStackOutput into '${...}' text."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return f"${{{arg}}}"
        if key == "Fn::Join":
            sep, parts = arg
            return sep.join(str(render(p)) for p in parts)
        if key == "Fn::GetAtt":
            return f"${{{arg[0]}.{arg[1]}}}"
        if key == "Fn::Sub" and isinstance(arg, str):
            return arg
        if key == "Fn::GetStackOutput":
            return f"${{{arg['StackName']}:{arg['OutputName']}}}"
    if isinstance(value, list):
        return [render(v) for v in value]
    return value


def ref_target(value: Any) -> str:
    """The logical ID a {"Ref": X} or {"Fn::GetAtt": [X, ...]} points at."""
    if "Ref" in value:
        return str(value["Ref"])
    return str(value["Fn::GetAtt"][0])


def output_source(template: dict[str, Any], reference: Any) -> Any:
    """What a cross-stack reference (Fn::GetStackOutput) resolves to in the producer."""
    output = reference["Fn::GetStackOutput"]["OutputName"]
    return template["Outputs"][output]["Value"]
