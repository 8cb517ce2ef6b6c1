"""cdk-nag's AwsSolutions pack over the whole app: every finding is fixed, or
acknowledged with its reason where the resource is defined (cdk/nag.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Acknowledgment, App, Stack, Validations
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks
from infra_helpers import POLICY_PATH, ROOT, cdk_context

from cdk.stacks import add_quiver_stacks

pytestmark = pytest.mark.infra

# A reason shorter than this says what, not why ("not needed", "false positive").
MIN_REASON = 60


def findings(pack: AwsSolutionsChecks, app: App) -> list[str]:
    report = pack.validate_scope(app)
    return [f"{v.rule_name} at {r.construct_path}"
            for v in report.violations for r in v.violating_resources]


# The example policy, and the same with what it leaves out: the return-path key ring
# (the senders' and intakes' secret grants) and the one-click unsubscribe endpoint.
WITH_UNSUBSCRIBE = """
[return_path]
key_secret = "quiver/return-path/keys"

[[unsubscribe.domains]]
from = "example.com"
url = "https://unsubscribe.example.com/u/"
"""


@pytest.fixture(scope="module", params=["example", "with-unsubscribe"])
def nag_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[App, AwsSolutionsChecks]]:
    tmp = tmp_path_factory.mktemp("nag")
    policy_path = POLICY_PATH
    if request.param == "with-unsubscribe":
        policy_path = tmp / "policy.toml"
        policy_path.write_text(POLICY_PATH.read_text() + WITH_UNSUBSCRIBE)
    app = App(context=cdk_context(), outdir=str(tmp / "out"))
    stacks = add_quiver_stacks(app, policy_path=policy_path, repo_root=ROOT)
    assert (stacks.service.unsubscribe is not None) == (request.param == "with-unsubscribe")
    pack = AwsSolutionsChecks(app)
    Validations.of(app).add_plugins(pack)
    # The pack's findings are what this test judges. The unpinned base image is the
    # image's own warning (cdk/sender_service.py), printed by every synth until the
    # digest is pinned (README, "Reproducible images").
    Validations.of(app).acknowledge(Acknowledgment(
        id="Annotation::quiver:unpinned-base-image",
        reason="Reported by every synth until image/base-image carries a digest; not a "
               "finding of the AwsSolutions pack, which is what this test judges."))
    yield app, pack


def test_the_app_has_no_unacknowledged_finding(nag_app: tuple[App, AwsSolutionsChecks]) -> None:
    app, pack = nag_app
    try:
        app.synth()  # the plugin fails synth on any finding, error or warning
    except RuntimeError as exc:
        listed = "\n  ".join(findings(pack, app))
        pytest.fail(f"cdk-nag findings to fix or acknowledge:\n  {listed}\n{exc}")
    assert findings(pack, app) == []


def acknowledgments(app: App) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for construct in app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                found[construct.node.path] = {**found.get(construct.node.path, {}),
                                              **entry.data}
    return found


def test_every_acknowledgment_gives_a_reason(nag_app: tuple[App, AwsSolutionsChecks]) -> None:
    app, _ = nag_app
    acknowledged = acknowledgments(app)
    nag = {(path, rule): reason for path, rules in acknowledged.items()
           for rule, reason in rules.items() if "AwsSolutions-" in rule}
    # The bucket, table, Lambda, network, sender and proxy acknowledgments all register.
    assert len(nag) >= 20, sorted(nag)
    for (path, rule), reason in nag.items():
        assert len(reason) >= MIN_REASON, f"{path} {rule}: {reason!r}"


def test_an_unacknowledged_finding_fails_synth(tmp_path: Path) -> None:
    # The control: without it, a pack that never ran would pass the test above.
    app = App(outdir=str(tmp_path))
    stack = Stack(app, "Unlogged")
    s3.Bucket(stack, "Bucket", enforce_ssl=True)
    pack = AwsSolutionsChecks(app)
    Validations.of(app).add_plugins(pack)
    # The pack's findings are what this test judges. The unpinned base image is the
    # image's own warning (cdk/sender_service.py), printed by every synth until the
    # digest is pinned (README, "Reproducible images").
    Validations.of(app).acknowledge(Acknowledgment(
        id="Annotation::quiver:unpinned-base-image",
        reason="Reported by every synth until image/base-image carries a digest; not a "
               "finding of the AwsSolutions pack, which is what this test judges."))
    with pytest.raises(RuntimeError, match="AwsSolutions-S1"):
        app.synth()
    assert "AwsSolutions-S1 at Unlogged/Bucket/Resource" in findings(pack, app)
