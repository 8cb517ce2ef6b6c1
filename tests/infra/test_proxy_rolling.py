"""The proxy tier's rolling update gated on health: one wait condition per node, named
by a digest of what restarts the node, signalled by the bootstrap through its
handle's presigned URL; every node waits for the wait conditions of the nodes
before it in (AZ, name) order."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template
from infra_helpers import build, render, resources

from cdk.deploy_checks import ADDRESSES_PER_ENI, DeploymentError, check_node_user_data
from cdk.logical_ids import logical_id_part
from cdk.proxy_tier import (
    NODE_READY_TIMEOUT_S,
    READY_DIGEST_LENGTH,
    SCRIPT_ROOM,
    every_boot,
    ready_digest,
    rolling_order,
)
from proxy_tier.bootstrap import SIGNAL_URL_BUDGET, SIGNAL_URL_STAND_IN, render_user_data
from quiver.policy import Policy, parse_policy

pytestmark = pytest.mark.infra

_READY = re.compile(r"^EgressNode(?P<node>[A-Za-z0-9]+)Ready(?P<digest>[0-9a-f]+)$")


def node_ids(template: dict[str, Any]) -> dict[str, str]:
    """Node name -> its instance's logical ID."""
    return {
        {t["Key"]: t["Value"] for t in r["Properties"]["Tags"]}["quiver:node"]: k
        for k, r in resources(template, "AWS::EC2::Instance").items()
    }


def ready_ids(template: dict[str, Any]) -> dict[str, str]:
    """Node name -> the logical ID of the wait condition its deploy holds at."""
    by_instance = {r["DependsOn"][0]: k
                   for k, r in resources(template, "AWS::CloudFormation::WaitCondition").items()}
    return {name: by_instance[instance] for name, instance in node_ids(template).items()}


def user_data(template: dict[str, Any], instance: str) -> Any:
    return template["Resources"][instance]["Properties"]["UserData"]["Fn::Base64"]


def test_each_node_has_one_wait_condition_for_one_signal(
    service: dict[str, Any], policy: Policy,
) -> None:
    conditions = resources(service, "AWS::CloudFormation::WaitCondition")
    handles = resources(service, "AWS::CloudFormation::WaitConditionHandle")
    assert len(conditions) == len(handles) == len(policy.proxy.nodes)
    instances = node_ids(service)
    for name, ready in ready_ids(service).items():
        match = _READY.match(ready)
        assert match is not None and match["node"] == logical_id_part(name)
        assert len(match["digest"]) == READY_DIGEST_LENGTH
        condition = conditions[ready]
        assert condition["Properties"] == {
            "Count": 1, "Timeout": str(NODE_READY_TIMEOUT_S), "Handle": {"Ref": f"{ready}Handle"},
        }
        # Its timeout starts once the instance has (re)started, not before.
        assert condition["DependsOn"] == [instances[name]]
        assert handles[f"{ready}Handle"] == {"Type": "AWS::CloudFormation::WaitConditionHandle"}
        # No creation policy: cfn-signal cannot reach CloudFormation from a node.
        assert "CreationPolicy" not in service["Resources"][instances[name]]


def test_the_bootstrap_signals_the_handle_url_after_the_health_check(
    service: dict[str, Any], policy: Policy,
) -> None:
    instances = node_ids(service)
    for name, ready in ready_ids(service).items():
        joined = user_data(service, instances[name])["Fn::Join"]
        # The presigned URL is the only value CloudFormation fills in, inside quotes.
        references = [p for p in joined[1] if not isinstance(p, str)]
        assert references == [{"Ref": f"{ready}Handle"}]
        script = render(user_data(service, instances[name]))
        assert f"signal_url='${{{ready}Handle}}'\n" in script
        node = policy.proxy.nodes[name]
        health = f"http://{node.address}:{policy.proxy.health_port}/health"
        assert script.index(f"curl -fsS -o /dev/null --max-time 2 {health}") < script.index(
            "signal_ready SUCCESS")
        assert 'signal_ready FAILURE "node ' in script
        assert "cfn-signal" not in script and "aws-cfn-bootstrap" not in script


def test_each_node_waits_for_every_earlier_node_in_az_then_name_order(
    service: dict[str, Any], policy: Policy,
) -> None:
    instances, ready = node_ids(service), ready_ids(service)
    order = rolling_order(policy)
    assert order == sorted(policy.proxy.nodes, key=lambda n: (policy.proxy.nodes[n].az, n))
    for position, name in enumerate(order):
        depends = service["Resources"][instances[name]]["DependsOn"]
        waits_for = {d for d in depends if d in ready.values()}
        assert waits_for == {ready[earlier] for earlier in order[:position]}


def test_rolling_order_is_by_az_before_name() -> None:
    policy = parse_policy("\n".join([
        'default_pool = "p"',
        "[proxy.nodes.alpha]", 'az = "us-east-1c"', 'address = "10.60.2.10"',
        "[proxy.nodes.beta]", 'az = "us-east-1a"', 'address = "10.60.0.10"',
        "[proxy.nodes.gamma]", 'az = "us-east-1a"', 'address = "10.60.0.40"',
        "[sources.s1]", 'ip = "198.51.100.1"', 'local_ip = "10.60.0.11"', 'node = "beta"',
        'ehlo = "s1.example.com"',
        "[pools.p]", 'sources = ["s1"]',
    ]))
    assert rolling_order(policy) == ["beta", "gamma", "alpha"]


def test_the_digest_follows_each_input_that_restarts_a_node() -> None:
    def digest(user_data: str = "#!/bin/bash\n", instance_type: str = "c7g.large",
               image_id: str = "resolve:ssm:/x", timeout_s: int = 900) -> str:
        return ready_digest(user_data=user_data, instance_type=instance_type,
                            image_id=image_id, timeout_s=timeout_s)

    base = digest()
    assert re.fullmatch(rf"[0-9a-f]{{{READY_DIGEST_LENGTH}}}", base)
    assert digest() == base
    assert len({base, digest(user_data="#!/bin/bash\n\n"), digest(instance_type="c7g.xlarge"),
                digest(image_id="ami-0123456789abcdef0"), digest(timeout_s=600)}) == 5


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """The service template of the example policy with text replacements applied."""
    from infra_helpers import POLICY_PATH

    def make(*replacements: tuple[str, str]) -> dict[str, Any]:
        text = POLICY_PATH.read_text()
        for old, new in replacements:
            assert old in text, f"{old!r} is not in the policy: the test is stale"
            text = text.replace(old, new)
        work = tmp_path_factory.mktemp("variant")
        path = work / "policy.toml"
        path.write_text(text)
        return Template.from_stack(build(path, work / "out").service).to_json()

    return make


def test_only_a_node_whose_user_data_changes_gets_a_new_wait_condition(
    service: dict[str, Any], variants: Callable[..., dict[str, Any]],
) -> None:
    # bulk2 moves to another address of egress-b's block: egress-b's bootstrap waits
    # for a different address, the other nodes' user data is unchanged.
    changed = variants(('local_ip = "10.60.1.12"', 'local_ip = "10.60.1.13"'))
    before, after = ready_ids(service), ready_ids(changed)
    instances = node_ids(service)
    for name in before:
        same_user_data = render(user_data(service, instances[name])) == render(
            user_data(changed, instances[name]))
        assert same_user_data == (name != "egress-b")
        assert (before[name] == after[name]) == same_user_data, name
    # The new handle is in the changed node's user data: the node restarts with it.
    assert f"{after['egress-b']}Handle" in str(user_data(changed, instances["egress-b"]))


def test_a_change_that_leaves_the_nodes_alone_keeps_every_wait_condition(
    service: dict[str, Any], variants: Callable[..., dict[str, Any]],
) -> None:
    # Pool weights and throttles are the senders' business: no node's config or user
    # data changes.
    changed = variants(("bulk1 = 2, bulk2 = 2, bulk3 = 1", "bulk1 = 3, bulk2 = 2, bulk3 = 1"),
                       ('max_connections = 50\nmax_rate = "300/s"',
                        'max_connections = 40\nmax_rate = "200/s"'))
    instances = node_ids(service)
    for name, instance in instances.items():
        assert user_data(changed, instance) == user_data(service, instance), name
    assert ready_ids(changed) == ready_ids(service)
    ordered = rolling_order_of(changed)
    for earlier, later in itertools.pairwise(ordered):
        assert ready_ids(changed)[earlier] in changed["Resources"][instances[later]]["DependsOn"]


def rolling_order_of(template: dict[str, Any]) -> list[str]:
    """The node order the template's DependsOn chain encodes (fewest waits first)."""
    instances, ready = node_ids(template), set(ready_ids(template).values())
    waits = {name: len(set(template["Resources"][i]["DependsOn"]) & ready)
             for name, i in instances.items()}
    return sorted(waits, key=waits.__getitem__)


def many_sources(count: int) -> Policy:
    lines = ['default_pool = "p"', "[proxy.nodes.big]", 'az = "us-east-1a"',
             'address = "10.60.0.10"']
    for i in range(count):
        lines += [f"[sources.bulk-source-{i:03d}]", f'ip = "203.0.{i // 250}.{i % 250 + 1}"',
                  f'local_ip = "10.61.{i // 250 + 1}.{i % 250 + 1}"', 'node = "big"',
                  f'ehlo = "bulk-source-{i:03d}.mail.example.com"']
    lines += ["[pools.p]", "sources = [" + ", ".join(
        f'"bulk-source-{i:03d}"' for i in range(count)) + "]"]
    return parse_policy("\n".join(lines))


def planned(policy: Policy) -> Callable[[], str]:
    return lambda: every_boot(render_user_data(
        policy, "big", signal_url=SIGNAL_URL_STAND_IN, log_group="/quiver/QuiverService/x",
        room=SCRIPT_ROOM))


def test_every_source_count_up_to_the_limit_fits_with_the_url_and_the_wrapper() -> None:
    # The bootstrap picks a plain or compressed config by the room it is given: a
    # plain script just under EC2's limit must not go over it once wrapped in MIME.
    for count in range(1, 81):
        user_data = check_node_user_data("big", planned(many_sources(count)))
        assert len(user_data.encode()) - len(SIGNAL_URL_STAND_IN) + SIGNAL_URL_BUDGET <= 16384


def test_user_data_without_room_for_the_signal_url_fails_synth_naming_the_node() -> None:
    # More sources than any interface carries (ADDRESSES_PER_ENI tops out at 50) still
    # fit with the URL's room; past about 80 the node's user data does not.
    assert max(ADDRESSES_PER_ENI.values()) < 80
    fits = check_node_user_data("big", planned(many_sources(80)))
    assert len(fits.encode()) + SIGNAL_URL_BUDGET - len(SIGNAL_URL_STAND_IN) <= 16 * 1024
    with pytest.raises(DeploymentError) as error:
        check_node_user_data("big", planned(many_sources(90)))
    message = str(error.value)
    assert "proxy.nodes.big: user data for node 'big' is" in message
    assert (f"with room for the {SIGNAL_URL_BUDGET}-byte signal URL, over the {SCRIPT_ROOM} "
            "left of EC2's 16384 by what wraps it") in message
    assert "place fewer sources on this node" in message


def test_cfn_lint_finds_nothing_on_the_nodes_with_every_rule_on(
    service: dict[str, Any], tmp_path: Path,
) -> None:
    # Without cdk/cfn-lint.yaml's ignores: the redundant-DependsOn rule (W3005) must not
    # fire on the chain of waits, nor any rule on the wait conditions or their handles.
    path = tmp_path / "QuiverService.template.json"
    path.write_text(json.dumps(service))
    beside = Path(sys.executable).with_name("cfn-lint")
    linter = str(beside) if beside.exists() else shutil.which("cfn-lint")
    assert linter, "cfn-lint is missing: it is in the dev extra (scripts/setup.sh installs it)"
    result = subprocess.run([linter, "--format", "json", "--", str(path)],
                            capture_output=True, text=True, timeout=300, check=False)
    findings = json.loads(result.stdout or "[]")
    assert findings, "cfn-lint reported nothing at all: the run proves nothing"
    on_nodes = [f for f in findings
                if "/EgressNode" in "/".join(map(str, f["Location"]["Path"]))]
    assert on_nodes == []


def readme_section(title: str) -> str:
    from infra_helpers import ROOT

    text = (ROOT / "README.md").read_text()
    start = text.index(f"### {title}\n")
    return text[start:text.index("\n### ", start + 1)]


def test_the_readme_runbook_matches_the_code(policy: Policy) -> None:
    from proxy_tier import bootstrap

    text = " ".join(readme_section("Rolling update of the proxy tier").split())
    assert f"timeout {NODE_READY_TIMEOUT_S} s" in text and NODE_READY_TIMEOUT_S == 15 * 60
    assert "after 15 minutes" in text
    assert (f"after {bootstrap.HEALTH_WAIT_ATTEMPTS} checks "
            f"{bootstrap.HEALTH_WAIT_SECONDS} s apart") in text
    assert (f"tried {bootstrap.SIGNAL_ATTEMPTS} times, "
            f"{bootstrap.SIGNAL_RETRY_SECONDS} s apart") in text
    assert "`EgressNode<Node>Ready<digest>`" in text and "(AZ, name) order" in text
    # The messages it tells operators to look for are the ones the bootstrap prints.
    script = bootstrap.render_user_data(policy, "egress-b", signal_url="https://x/y",
                                        log_group="/quiver/QuiverService/egress-haproxy")
    for message, printed in (
        ("quiver: signalled SUCCESS to the deploy", 'echo "quiver: signalled $1 to the deploy"'),
        ("quiver: egress node <node> ready", 'echo "quiver: egress node egress-b ready"'),
        ("quiver: could not signal", 'echo "quiver: could not signal $1'),
    ):
        assert message in text and printed in script
    # The failure it quotes is the one egress-b of the example policy would send.
    reason = "node egress-b: HAProxy does not answer http://10.60.1.10:8500/health"
    assert f"'{reason}' for uniqueId: egress-b" in text
    check = bootstrap.render_ready_check(policy, "egress-b", signal_url="https://x/y")
    assert 'fail "HAProxy does not answer http://10.60.1.10:8500/health"' in check
    assert 'signal_ready FAILURE "node egress-b: ${failed' in check


def test_the_synth_refusals_name_the_user_data_limit() -> None:
    text = " ".join(readme_section("Proxy tier update paths that synth refuses").split())
    assert SIGNAL_URL_BUDGET == 2 * 1024
    assert "once 2 KB are kept for its wait condition's URL" in text
    # "About 80": 78 sources fit, 84 do not.
    assert "(about 80 sources" in text
    check_node_user_data("big", planned(many_sources(78)))
    with pytest.raises(DeploymentError):
        check_node_user_data("big", planned(many_sources(84)))
