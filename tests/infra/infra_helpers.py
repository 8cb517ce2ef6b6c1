"""Helpers for the infra tests: building the app and reading synthesized templates."""

from __future__ import annotations

import json
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


def resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    """The template's resources of one type, by logical ID."""
    return {k: r for k, r in template["Resources"].items() if r["Type"] == type_}


def only(template: dict[str, Any], type_: str) -> tuple[str, dict[str, Any]]:
    """The single resource of a type: (logical ID, properties)."""
    found = resources(template, type_)
    assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
    ((logical_id, resource),) = found.items()
    return logical_id, resource.get("Properties", {})


def statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every IAM statement in the template, with the logical ID it belongs to."""
    found: list[tuple[str, dict[str, Any]]] = []
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        documents = []
        if resource["Type"] == "AWS::IAM::Policy":
            documents.append(props["PolicyDocument"])
        if resource["Type"] == "AWS::IAM::Role":
            documents.extend(p["PolicyDocument"] for p in props.get("Policies", []))
        for document in documents:
            found.extend((logical_id, statement) for statement in document["Statement"])
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
