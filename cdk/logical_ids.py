"""Pinning CloudFormation logical IDs of resources that must never be replaced."""

from __future__ import annotations

import re

from aws_cdk import CfnResource
from constructs import IConstruct

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def pin_logical_id(construct: IConstruct, logical_id: str) -> None:
    """Give the construct's CloudFormation resource a fixed logical ID.

    CloudFormation identifies a resource by its logical ID; CDK derives that ID from
    the construct path, so moving a construct (a refactor) would delete the old
    queue or bucket and create a new, empty one. A pinned ID survives refactors.
    """
    resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
    if not isinstance(resource, CfnResource):
        raise TypeError(f"{construct.node.path} has no CloudFormation resource to pin")
    resource.override_logical_id(logical_id)


def logical_id_part(name: str) -> str:
    """A policy name ('bulk-1', 'egress_a') as a logical-ID fragment ('Bulk1', 'EgressA')."""
    parts = [p for p in _NON_ALNUM.split(name) if p]
    if not parts:
        raise ValueError(f"{name!r} has no letters or digits to build a logical ID from")
    return "".join(p[:1].upper() + p[1:] for p in parts)
