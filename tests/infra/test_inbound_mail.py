"""Inbound mail in the deployed stacks: the active receipt rule set with a rule per FBL
address, unsubscribe mailto address and bounce domain, the bucket policy SES needs
(this account's rule set only), S3 → queue (with DLQ) → Lambda per kind, and intake
roles with exactly what they use."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template
from infra_helpers import (
    CFN_LINT_CONFIG,
    POLICY_PATH,
    as_list,
    build,
    output_source,
    render,
    resources,
)
from test_cli_synth import cfn_lint
from test_events import RUNTIME_PACKAGES, code_dir
from test_iam import role_statements

from cdk.inbound_mail import INTAKE_MAX_RECEIVES, INTAKE_VISIBILITY
from quiver.settings import INTAKE_VARIABLES

pytestmark = pytest.mark.infra

SECTIONS = """
[return_path]
key_secret = "quiver/return-path/keys"
[[return_path.domains]]
from = "example.com"
bounce = "bounces.example.com"
[[return_path.domains]]
from = "example.org"
bounce = "bounces.example.org"
[[return_path.domains]]
from = "example.com"
bounce = "bounces.example.com"
tenant = "acme"
[feedback]
addresses = ["fbl@bounces.example.com", "fbl@fbl.example.net"]
trusted_reporters = [{ domain = "yahoo.com" }]
[[unsubscribe.domains]]
from = "example.com"
url = "https://unsubscribe.example.com/u/"
mailto = "unsubscribe@bounces.example.com"
[[unsubscribe.domains]]
from = "example.org"
url = "https://unsubscribe.example.com/u/"
mailto = "Unsubscribe@Bounces.example.com"
[[unsubscribe.domains]]
from = "example.com"
tenant = "acme"
url = "https://unsubscribe.example.com/u/"
mailto = "leave@fbl.example.net"
"""


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("inbound")
    path = tmp / "policy.toml"
    path.write_text(POLICY_PATH.read_text() + SECTIONS)
    stacks = build(path, tmp / "out")
    return (Template.from_stack(stacks.stateful).to_json(),
            Template.from_stack(stacks.service).to_json())


def rules(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in resources(service, "AWS::SES::ReceiptRule").items()}


def in_order(found: dict[str, dict[str, Any]]) -> list[str]:
    """The rules' recipients in the order SES evaluates them (each names its `After`)."""
    after = {p.get("After", {}).get("Ref"): k for k, p in found.items()}
    order, current = [], after[None]
    while current is not None:
        order.append(found[current]["Rule"]["Recipients"][0])
        current = after.get(current)
    assert len(order) == len(found)
    return order


def test_one_rule_per_fbl_address_then_per_mailto_then_per_bounce_domain_in_order(
        templates: Any) -> None:
    stateful, service = templates
    (set_id, rule_set), = resources(service, "AWS::SES::ReceiptRuleSet").items()
    assert rule_set["Properties"]["RuleSetName"] == "quiver-inbound"
    found = rules(service)
    by_recipient = {tuple(p["Rule"]["Recipients"]): (k, p) for k, p in found.items()}
    # Two rules name the same mailto (in two cases): one receipt rule.
    assert in_order(found) == [
        "fbl@bounces.example.com", "fbl@fbl.example.net", "unsubscribe@bounces.example.com",
        "leave@fbl.example.net", "bounces.example.com", "bounces.example.org"]
    for fbl_address in ("fbl@bounces.example.com", "fbl@fbl.example.net"):
        _, fbl = by_recipient[(fbl_address,)]
        # The FBL address shares a bounce domain: its rule comes first and stops the set.
        s3_action, stop = fbl["Rule"]["Actions"]
        assert stop == {"StopAction": {"Scope": "RuleSet"}}
        assert s3_action["S3Action"]["ObjectKeyPrefix"] == "fbl/"
    # Each mailto is stored for the bounce intake, once: its rule stops the set before
    # its bounce domain's rule would store it again. The one on the FBL-only domain
    # has no domain rule behind it at all.
    for mailto in ("unsubscribe@bounces.example.com", "leave@fbl.example.net"):
        _, rule = by_recipient[(mailto,)]
        s3_action, stop = rule["Rule"]["Actions"]
        assert stop == {"StopAction": {"Scope": "RuleSet"}}
        assert s3_action["S3Action"]["ObjectKeyPrefix"] == "bounce/"
        assert output_source(stateful, s3_action["S3Action"]["BucketName"]) == {
            "Ref": "InboundBucket"}
    for domain in ("bounces.example.com", "bounces.example.org"):
        _, rule = by_recipient[(domain,)]
        (action,) = rule["Rule"]["Actions"]
        assert action["S3Action"]["ObjectKeyPrefix"] == "bounce/"
        assert output_source(stateful, action["S3Action"]["BucketName"]) == {
            "Ref": "InboundBucket"}
        assert "After" in rule
    for _, rule in found.items():
        assert rule["RuleSetName"] == {"Ref": set_id}
        assert rule["Rule"]["Enabled"] is True and rule["Rule"]["ScanEnabled"] is True


def test_the_rule_set_is_made_active_and_deactivated_on_delete(templates: Any) -> None:
    _, service = templates
    (active,) = [r for k, r in resources(service, "Custom::AWS").items()
                 if k.startswith("InboundMailActivateRuleSet")]
    props = active["Properties"]
    create, update, delete = (json.loads(props[k]) for k in ("Create", "Update", "Delete"))
    assert create["action"] == update["action"] == delete["action"] == "setActiveReceiptRuleSet"
    assert create["parameters"] == {"RuleSetName": "quiver-inbound"}
    assert delete["parameters"] == {}
    set_id = next(iter(resources(service, "AWS::SES::ReceiptRuleSet")))
    assert set_id in as_list(active.get("DependsOn", []))
    granted = [s for p in resources(service, "AWS::IAM::Policy").values()
               for s in p["Properties"]["PolicyDocument"]["Statement"]
               if "ses:SetActiveReceiptRuleSet" in as_list(s["Action"])]
    assert granted == [{"Action": "ses:SetActiveReceiptRuleSet", "Effect": "Allow",
                        "Resource": "*"}]


def test_ses_may_write_only_under_the_prefixes_for_this_account_s_rule_set(
        templates: Any) -> None:
    stateful, _ = templates
    (policy,) = [p for p in resources(stateful, "AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": "InboundBucket"}]
    (ses,) = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
              if s.get("Principal") == {"Service": "ses.amazonaws.com"}]
    assert ses["Action"] == "s3:PutObject"
    assert [str(render(r)) for r in ses["Resource"]] == [
        "${InboundBucket.Arn}/bounce/*", "${InboundBucket.Arn}/fbl/*"]
    assert ses["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert str(render(ses["Condition"]["ArnLike"]["aws:SourceArn"])).endswith(
        ":receipt-rule-set/quiver-inbound:receipt-rule/*")


def test_each_prefix_notifies_its_queue_which_dead_letters(templates: Any) -> None:
    stateful, _ = templates
    (notifications,) = resources(stateful, "Custom::S3BucketNotifications").values()
    props = notifications["Properties"]
    assert props["BucketName"] == {"Ref": "InboundBucket"}
    routes = {c["Filter"]["Key"]["FilterRules"][0]["Value"]: c["QueueArn"]["Fn::GetAtt"][0]
              for c in props["NotificationConfiguration"]["QueueConfigurations"]}
    assert routes == {"bounce/": "BounceIntakeQueue", "fbl/": "FblIntakeQueue"}
    queues = resources(stateful, "AWS::SQS::Queue")
    for name in ("BounceIntake", "FblIntake"):
        queue = queues[f"{name}Queue"]
        assert queue["DeletionPolicy"] == "Retain"
        redrive = queue["Properties"]["RedrivePolicy"]
        assert redrive["maxReceiveCount"] == INTAKE_MAX_RECEIVES
        assert redrive["deadLetterTargetArn"] == {
            "Fn::GetAtt": [f"{name}DeadLetterQueue", "Arn"]}
        assert queue["Properties"]["VisibilityTimeout"] == INTAKE_VISIBILITY.to_seconds()
        # S3 may send to the queue only for this bucket.
        (policy,) = [p for p in resources(stateful, "AWS::SQS::QueuePolicy").values()
                     if p["Properties"]["Queues"] == [{"Ref": f"{name}Queue"}]]
        (send,) = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
                   if s.get("Principal") == {"Service": "s3.amazonaws.com"}]
        assert send["Condition"]["ArnLike"]["aws:SourceArn"] == {
            "Fn::GetAtt": ["InboundBucket", "Arn"]}


def function_of(service: dict[str, Any], prefix: str) -> tuple[str, dict[str, Any]]:
    (found,) = [(k, r) for k, r in resources(service, "AWS::Lambda::Function").items()
                if k.startswith(prefix)]
    return found


@pytest.mark.parametrize(("prefix", "queue", "objects", "handler"), [
    ("InboundMailBounceFunction", "BounceIntakeQueue", "/bounce/*",
     "functions.bounce_intake.handler.handler"),
    ("InboundMailFblFunction", "FblIntakeQueue", "/fbl/*", "functions.fbl_intake.handler.handler"),
])
def test_each_intake_reads_its_queue_with_partial_batch_failures_and_only_what_it_uses(
        templates: Any, prefix: str, queue: str, objects: str, handler: str) -> None:
    stateful, service = templates
    logical_id, function = function_of(service, prefix)
    props = function["Properties"]
    assert props["Handler"] == handler
    assert set(INTAKE_VARIABLES) <= set(props["Environment"]["Variables"])
    (mapping,) = [m["Properties"] for m in resources(service,
                                                      "AWS::Lambda::EventSourceMapping").values()
                  if m["Properties"]["FunctionName"] == {"Ref": logical_id}]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert output_source(stateful, mapping["EventSourceArn"]) == {
        "Fn::GetAtt": [queue, "Arn"]}
    role = props["Role"]["Fn::GetAtt"][0]
    granted = {s.get("Sid", "consume"): s for s in role_statements(service, role)}
    assert set(granted) == {"consume", "ReadInboundMail", "PublishEvents", "Suppress",
                            "ReadReturnPathReferences", "ReadPolicy", "ReadReturnPathKeys"}
    assert granted["ReadInboundMail"]["Action"] == "s3:GetObject"
    assert str(render(granted["ReadInboundMail"]["Resource"])).endswith(objects)
    assert granted["PublishEvents"]["Action"] == "sqs:SendMessage"
    assert output_source(stateful, granted["PublishEvents"]["Resource"]) == {
        "Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert granted["Suppress"]["Action"] == "dynamodb:PutItem"
    assert output_source(stateful, granted["Suppress"]["Resource"]) == {
        "Fn::GetAtt": ["SuppressionTable", "Arn"]}
    references = granted["ReadReturnPathReferences"]
    assert references["Action"] == "dynamodb:GetItem"
    assert references["Condition"] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["rp#*"]}}
    assert output_source(stateful, references["Resource"]) == {
        "Fn::GetAtt": ["FinalsTable", "Arn"]}
    assert granted["ReadPolicy"]["Action"] == "s3:GetObject"
    (_, (bucket_arn, key)) = granted["ReadPolicy"]["Resource"]["Fn::Join"]
    assert output_source(stateful, bucket_arn) == {"Fn::GetAtt": ["PolicyBucket", "Arn"]}
    assert key == "/policy/quiver.toml"
    assert str(render(granted["ReadReturnPathKeys"]["Resource"])).endswith(
        ":secret:quiver/return-path/*")
    assert sorted(as_list(granted["consume"]["Action"])) == [
        "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl", "sqs:ReceiveMessage"]


def test_without_bounce_domains_or_fbl_addresses_no_rule_set(service: dict[str, Any]) -> None:
    assert resources(service, "AWS::SES::ReceiptRuleSet") == {}
    assert resources(service, "AWS::SES::ReceiptRule") == {}
    # The intakes still run: a DLQ redrive or a reprocessing finds them.
    assert len([k for k in resources(service, "AWS::Lambda::Function")
                if k.startswith("InboundMail")]) == 2


def test_cfn_lint_is_clean_on_the_inbound_templates(
        templates: Any, tmp_path: Path) -> None:
    paths = []
    for name, template in zip(("stateful", "service"), templates, strict=True):
        path = tmp_path / f"{name}.template.json"
        path.write_text(json.dumps(template))
        paths.append(str(path))
    result = subprocess.run([cfn_lint(), "--config-file", str(CFN_LINT_CONFIG), "--", *paths],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("function", "imports"), [
    # The bounce function also reads the mailed unsubscribe requests.
    ("bounce_intake", "import quiver.intake.bounce, quiver.intake.by_recipient, quiver.policy"),
    # The FBL function also carries dkimpy and dnspython, which the layer lacks.
    ("fbl_intake", "import quiver.intake.complaint, quiver.routing.txt, dkim, dns.resolver"),
])
def test_packaged_intakes_import_with_only_what_lambda_provides_and_carry(
        synth: Any, tmp_path: Path, function: str, imports: str) -> None:
    site = tmp_path / "runtime"
    site.mkdir()
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, f"{name} is not installed here"
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (site / source.name).symlink_to(source)
    (function_id,) = [k for k, r in resources(synth.service, "AWS::Lambda::Function").items()
                      if r["Properties"].get("Handler") == f"functions.{function}.handler.handler"]
    root = code_dir(synth, function_id)
    # -S: no site-packages; only the runtime's packages and what the asset carries.
    result = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; sys.path[:0] = sys.argv[1:]; "
         f"import functions.{function}.handler as h; assert callable(h.handler); {imports}",
         str(root), str(site)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "test"},
    )
    assert result.returncode == 0, result.stderr
