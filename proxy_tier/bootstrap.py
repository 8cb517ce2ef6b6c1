"""EC2 user data that turns an Amazon Linux 2023 instance into an egress node.

The script installs HAProxy, sets kernel limits for many outbound SMTP
connections, waits for the sources' secondary private IPs, writes the config
rendered from the policy, validates it with `haproxy -c`, and starts HAProxy or
reloads it. Running it again with the same policy changes nothing; with a new
policy it reloads without dropping connections.

Use it verbatim (CDK: `ec2.UserData.custom(render_user_data(policy, node))`): it
carries its own shebang.
"""

from __future__ import annotations

import base64
import gzip
import textwrap

from proxy_tier.render import (
    DEFAULT_STATS_SOCKET,
    RenderError,
    node_sources,
    render_haproxy_config,
)
from quiver.policy import Policy

# EC2 refuses user data above 16 KB (before base64 encoding).
USER_DATA_LIMIT = 16 * 1024
CONFIG_PATH = "/etc/haproxy/haproxy.cfg"
SYSCTL_PATH = "/etc/sysctl.d/90-quiver-egress.conf"
# The distribution package creates this user and directory.
HAPROXY_USER = "haproxy"
HAPROXY_HOME = "/var/lib/haproxy"
# How long to wait for the secondary IPs at boot (attempts x seconds).
ADDRESS_WAIT_ATTEMPTS = 90
ADDRESS_WAIT_SECONDS = 2
_CFG_EOF = "QUIVER_HAPROXY_CFG"

_SYSCTLS = """\
# Outbound connections take their local port from here: a wider range allows
# more concurrent connections per (source address, MX address, port 25).
net.ipv4.ip_local_port_range = 1024 65000
# Reuse TIME_WAIT ports for new outbound connections (TCP timestamps keep it safe).
net.ipv4.tcp_tw_reuse = 1
# Free the ports of closed SMTP sessions sooner.
net.ipv4.tcp_fin_timeout = 15
# Room for bursts of new connections from the sender fleet.
net.core.somaxconn = 4096
net.ipv4.tcp_max_syn_backlog = 8192
# HAProxy may bind the sources' addresses before the interface has them at boot;
# the script below still waits for them, this only removes a start-up race.
net.ipv4.ip_nonlocal_bind = 1
net.ipv6.ip_nonlocal_bind = 1
"""


def render_user_data(policy: Policy, node: str) -> str:
    """The bash user-data script of proxy node `node`. Raises RenderError.

    The config is embedded as text when the script fits EC2's 16 KB limit, and
    gzip+base64 otherwise (a node with many sources).
    """
    config = render_haproxy_config(
        policy, node, stats_socket=DEFAULT_STATS_SOCKET, run_as=HAPROXY_USER, chroot=HAPROXY_HOME
    )
    addresses = [s.local_ip for s in node_sources(policy, node) if s.local_ip]
    script = _script(policy, node, addresses, _plain(config))
    if len(script.encode()) > USER_DATA_LIMIT:
        script = _script(policy, node, addresses, _compressed(config))
    size = len(script.encode())
    if size > USER_DATA_LIMIT:
        raise RenderError(
            f"user data for node {node!r} is {size} bytes, over EC2's {USER_DATA_LIMIT}: "
            "place fewer sources on this node"
        )
    return script


def _plain(config: str) -> str:
    if any(line.strip() == _CFG_EOF for line in config.splitlines()):
        raise RenderError(f"the config contains the line {_CFG_EOF!r}, which ends the heredoc")
    return f"cat > \"$new\" <<'{_CFG_EOF}'\n{config}{_CFG_EOF}\n"


def _compressed(config: str) -> str:
    # mtime=0: the same policy gives the same bytes, so CDK sees no change to deploy.
    packed = base64.b64encode(gzip.compress(config.encode(), mtime=0)).decode()
    body = "\n".join(textwrap.wrap(packed, 76))
    return f"base64 -d <<'{_CFG_EOF}' | gzip -dc > \"$new\"\n{body}\n{_CFG_EOF}\n"


def _script(policy: Policy, node: str, addresses: list[str], write_config: str) -> str:
    az = policy.proxy.nodes[node].az
    wait = ""
    if addresses:
        wait = f"""\
# The CDK app assigns each source's secondary private IP (and its Elastic IP) to
# this instance's interface; on AL2023 amazon-ec2-net-utils configures secondary
# IPs on the interface by itself. Wait for them, so HAProxy leaves from real
# addresses rather than failing its first connections.
# (grep without -q reads all of ip's output: with pipefail, an early exit would
# fail the pipeline on SIGPIPE although the address was found.)
has_addr() {{ ip -o addr show | grep -F " $1/" >/dev/null; }}
for addr in {' '.join(addresses)}; do
  for _ in $(seq 1 {ADDRESS_WAIT_ATTEMPTS}); do
    has_addr "$addr" && break
    sleep {ADDRESS_WAIT_SECONDS}
  done
  if ! has_addr "$addr"; then
    echo "quiver: $addr is not on any interface; check the ENI's secondary IPs" >&2
    exit 1
  fi
done

"""
    return f"""\
#!/bin/bash
# Quiver egress node {node} ({az}): HAProxy with the config rendered from the
# policy. Safe to run again: an unchanged config changes nothing, a new one is
# validated and then reloaded without dropping connections.
set -euo pipefail

rpm -q haproxy >/dev/null 2>&1 || dnf install -y haproxy

cat > {SYSCTL_PATH} <<'QUIVER_SYSCTL'
{_SYSCTLS}QUIVER_SYSCTL
sysctl -q -p {SYSCTL_PATH} || echo "quiver: some kernel settings were not applied" >&2

{wait}# Written aside and validated first: a bad config never replaces a good one.
new=$(mktemp {CONFIG_PATH}.XXXXXX)
trap 'rm -f "$new"' EXIT
{write_config}chmod 0644 "$new"
haproxy -c -q -f "$new"
changed=1
if cmp -s "$new" {CONFIG_PATH}; then
  changed=0
else
  mv -f "$new" {CONFIG_PATH}
fi

# The unit runs haproxy -Ws (master-worker): a reload starts new workers on the
# same listening sockets and lets the old ones finish their SMTP sessions.
systemctl enable haproxy
if ! systemctl is-active --quiet haproxy; then
  systemctl start haproxy
elif [ "$changed" = 1 ]; then
  systemctl reload haproxy
fi
echo "quiver: egress node {node} ready"
"""
