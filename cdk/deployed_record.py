"""The committed record of what the proxy tier has deployed, and the synth that
refuses to undo it by accident.

Some policy edits synthesize fine and then fail, or do damage, at deploy:
- a source removed or renamed drops its `EgressIp<Source>` from the stateful stack:
  the address is retained but no longer anyone's, and a renamed source gets a
  new, cold address instead of its warmed-up one;
- a node's image or AZ change replaces its instance, and the new instance cannot
  start while the old one holds the node's interface at device index 0
  (CloudFormation creates the replacement first);
- a node's address block change replaces its subnet CIDR reservation, whose
  replacement overlaps the old one and is refused.

`<policy>.deployed.json` beside the policy file records the sources and the
nodes' image, AZ and block. Synth compares against it; the record changes only
deliberately, with `python -m proxy_tier record --config <policy> --accept`.
Without a record (a policy never deployed) nothing is compared.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from cdk.deploy_checks import DeploymentError
from cdk.egress_addresses import egress_ip_logical_id
from quiver.policy import Policy
from quiver.proxy.blocks import node_block

# `-c quiver:allow-remove-egress-ip=name[,name]`: the sources whose Elastic IP this
# synth may drop from the template (the address itself is retained).
ALLOW_REMOVE_CONTEXT = "quiver:allow-remove-egress-ip"
VERSION = 1


def record_path(policy_path: Path) -> Path:
    return policy_path.with_name(f"{policy_path.stem}.deployed.json")


def current_record(policy: Policy, *, image: str) -> dict[str, Any]:
    return {
        "version": VERSION,
        "egress_ips": {name: egress_ip_logical_id(name) for name in sorted(policy.sources)},
        "nodes": {
            name: {"az": node.az, "block": str(node_block(node.address)), "image": image}
            for name, node in sorted(policy.proxy.nodes.items())
        },
    }


def load_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DeploymentError([f"not JSON: {exc}"], str(path)) from None
    if not isinstance(record, dict) or record.get("version") != VERSION:
        raise DeploymentError([f"not a version {VERSION} record of deployed sources"],
                              str(path))
    return record


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def differences(
    record: dict[str, Any], policy: Policy, *, image: str, allow_remove: Collection[str] = (),
) -> list[str]:
    """What the policy would undo of the record, as `path: reason` problems."""
    problems: list[str] = []
    now = current_record(policy, image=image)
    for name, logical_id in sorted(record.get("egress_ips", {}).items()):
        if now["egress_ips"].get(name) == logical_id or name in allow_remove:
            continue
        problems.append(
            f"sources.{name}: gone from the policy, but its Elastic IP {logical_id} is "
            "deployed; the template would drop it (the address is retained, but no source "
            "owns it, and a renamed source gets a new, cold address). Keep the source's "
            f"name, or drop it on purpose: -c {ALLOW_REMOVE_CONTEXT}={name}, then "
            "`python -m proxy_tier record --config <policy> --accept`"
        )
    for name, was in sorted(record.get("nodes", {}).items()):
        if name not in now["nodes"]:
            continue  # a node removed: its instance, interface and reservation go
        new = now["nodes"][name]
        for key, why in (
            ("image", "replaces the instance, and the new one cannot start while the old "
                      "one holds the node's interface at device index 0"),
            ("az", "replaces the instance and its interface in another subnet"),
            ("block", "replaces the node's subnet CIDR reservation, which cannot change in "
                      "place: the new one would overlap the old"),
        ):
            if was.get(key) != new[key]:
                problems.append(
                    f"proxy.nodes.{name}: its {key} changes ({was.get(key)} -> {new[key]}); "
                    f"that {why}. Do it in two deploys: move its sources off "
                    "(`quiver proxy failover`, then the policy), remove the node, deploy; "
                    "add it back, deploy; then `python -m proxy_tier record --accept`"
                )
    return problems


def check_against_record(
    policy: Policy, *, policy_path: Path, image: str, allow_remove: Collection[str],
) -> None:
    """Raise DeploymentError when the policy would undo what the record says is deployed."""
    path = record_path(policy_path)
    record = load_record(path)
    if record is None:
        return
    problems = differences(record, policy, image=image, allow_remove=allow_remove)
    if problems:
        raise DeploymentError(problems, f"{policy_path} (against {path.name})")
