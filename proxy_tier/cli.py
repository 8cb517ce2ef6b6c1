"""`python -m proxy_tier render`: print a node's haproxy.cfg (or its user data) from a
policy file."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from proxy_tier.bootstrap import render_user_data
from proxy_tier.render import (
    DEFAULT_MAXCONN_PER_SOURCE,
    DEFAULT_STATS_SOCKET,
    RenderError,
    render_haproxy_config,
)
from quiver.policy import PolicyError, load_policy

EXIT_OK = 0
EXIT_INVALID = 1  # the policy cannot be loaded or the config cannot be rendered
EXIT_USAGE = 2  # the command named something that does not exist


def render_command(
    policy_path: str,
    node: str,
    out: TextIO,
    *,
    allow_networks: Sequence[str] | None = None,
    user_data: bool = False,
    stats_socket: str | None = DEFAULT_STATS_SOCKET,
    maxconn_per_source: int = DEFAULT_MAXCONN_PER_SOURCE,
    err: TextIO | None = None,
) -> int:
    """Write node `node`'s haproxy.cfg (or, with user_data, its EC2 user data) to `out`.

    Returns an exit code; every error goes to `err` (stderr) with what to do next.
    """
    err = sys.stderr if err is None else err
    try:
        policy = load_policy(policy_path)
    except PolicyError as exc:
        print(f"error: {exc}", file=err)
        print(f"fix the policy, then check it with `quiver config check {policy_path}`", file=err)
        return EXIT_INVALID
    if node not in policy.proxy.nodes:
        known = ", ".join(sorted(policy.proxy.nodes)) or "none: the policy has no [proxy.nodes]"
        print(f"error: unknown proxy node {node!r} in {policy_path}; known nodes: {known}",
              file=err)
        return EXIT_USAGE
    rig_options = (allow_networks is not None or stats_socket != DEFAULT_STATS_SOCKET
                   or maxconn_per_source != DEFAULT_MAXCONN_PER_SOURCE)
    if user_data and rig_options:
        print("error: --allow-network, --stats-socket and --maxconn-per-source are for "
              "test rigs; user data always renders production's", file=err)
        return EXIT_USAGE
    try:
        if user_data:
            text = render_user_data(policy, node)
        else:
            text = render_haproxy_config(
                policy, node, allow_networks=allow_networks, stats_socket=stats_socket,
                maxconn_per_source=maxconn_per_source,
            )
    except RenderError as exc:
        print(f"error: {policy_path}: node {node}: {exc}", file=err)
        return EXIT_INVALID
    out.write(text)
    return EXIT_OK
