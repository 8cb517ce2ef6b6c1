"""`python -m proxy_tier record --config FILE [--accept]`: show what the policy would
undo of its deployed record, and (--accept) make the policy the record. Run
`--accept` after a deploy that changed sources or nodes, and commit the record."""

from __future__ import annotations

import sys
from pathlib import Path

from quiver.policy import PolicyError, load_policy

EXIT_OK = 0
EXIT_DIFFERS = 1
EXIT_INVALID = 2


def record_command(policy_path: str, *, accept: bool) -> int:
    # The CDK app's modules (aws_cdk) load only for this command.
    from cdk.deploy_checks import DeploymentError
    from cdk.deployed_record import (
        current_record,
        differences,
        load_record,
        record_path,
        write_record,
    )
    from cdk.proxy_tier import DEFAULT_INSTANCE_TYPE, image_for

    try:
        policy = load_policy(policy_path)
        path = record_path(Path(policy_path))
        record = load_record(path)
    except (PolicyError, DeploymentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    image = image_for(DEFAULT_INSTANCE_TYPE)
    problems = [] if record is None else differences(record, policy, image=image)
    for problem in problems:
        print(f"differs: {problem}")
    if accept:
        write_record(path, current_record(policy, image=image))
        print(f"wrote {path}: commit it")
        return EXIT_OK
    if record is None:
        print(f"no record at {path}: nothing is compared until `--accept` writes one")
    elif not problems:
        print(f"{path}: the policy undoes nothing it records")
    return EXIT_DIFFERS if problems else EXIT_OK
