"""EC2 user data that turns an Amazon Linux 2023 instance into an egress node.

The script installs HAProxy, sets kernel limits for many outbound SMTP
connections, waits for the sources' secondary private IPs, writes the config
rendered from the policy, validates it with `haproxy -c`, and starts HAProxy or
reloads it. Running it again with the same policy changes nothing; with a new
policy it reloads without dropping connections.

Deployed (the CDK app passes both): HAProxy's log goes to a file that the
CloudWatch agent ships to `log_group`, so the node's logs outlive it; and once
HAProxy answers its own health check the script sends CloudFormation the
instance's creation signal (`signal`), so a node that never serves fails the
deploy instead of sitting in the stack doing nothing. Any failure before that
signals failure at once.

Use it verbatim (CDK: `ec2.UserData.custom(render_user_data(policy, node))`): it
carries its own shebang.
"""

from __future__ import annotations

import base64
import gzip
import json
import textwrap
from dataclasses import dataclass

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
# HAProxy logs to stdout (proxy_tier.render); the unit's stdout goes to this file,
# which the CloudWatch agent tails (it cannot read journald).
HAPROXY_LOG = "/var/log/haproxy/haproxy.log"
UNIT_DROP_IN = "/etc/systemd/system/haproxy.service.d/quiver-log.conf"
LOGROTATE_PATH = "/etc/logrotate.d/quiver-haproxy"
CW_AGENT_CONFIG = "/opt/aws/amazon-cloudwatch-agent/etc/quiver-haproxy.json"
CW_AGENT_CTL = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"
CFN_SIGNAL = "/opt/aws/bin/cfn-signal"
# The health check must pass within this (attempts x 2 s) before the node signals.
HEALTH_WAIT_ATTEMPTS = 60


@dataclass(frozen=True, slots=True)
class ResourceSignal:
    """The CloudFormation resource waiting for this node's signal (its instance)."""

    stack: str
    resource: str
    region: str

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


def render_user_data(
    policy: Policy, node: str, *, signal: ResourceSignal | None = None,
    log_group: str | None = None,
) -> str:
    """The bash user-data script of proxy node `node`. Raises RenderError.

    The config is embedded as text when the script fits EC2's 16 KB limit, and
    gzip+base64 otherwise (a node with many sources). `signal`: the resource to send
    CloudFormation's signal to once HAProxy is healthy; `log_group`: where the
    CloudWatch agent ships HAProxy's log.
    """
    config = render_haproxy_config(
        policy, node, stats_socket=DEFAULT_STATS_SOCKET, run_as=HAPROXY_USER, chroot=HAPROXY_HOME
    )
    addresses = [s.local_ip for s in node_sources(policy, node) if s.local_ip]
    extras = _Extras(signal=signal, log_group=log_group)
    script = _script(policy, node, addresses, _plain(config), extras)
    if len(script.encode()) > USER_DATA_LIMIT:
        script = _script(policy, node, addresses, _compressed(config), extras)
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


@dataclass(frozen=True, slots=True)
class _Extras:
    signal: ResourceSignal | None
    log_group: str | None


def _token(value: str, what: str) -> str:
    # Interpolated into shell and JSON: plain names only.
    if not value or not all(c.isalnum() or c in "-_./:#" for c in value):
        raise RenderError(f"{what} {value!r} has characters a bootstrap cannot carry")
    return value


def _signal_prologue(signal: ResourceSignal | None) -> str:
    if signal is None:
        return ""
    stack = _token(signal.stack, "stack name")
    resource = _token(signal.resource, "resource")
    region = _token(signal.region, "region")
    return f"""\
# CloudFormation waits for this node's signal when it creates the instance: any
# failure below signals failure at once (the deploy fails and rolls back) instead
# of leaving a node that serves nothing. At later boots nothing waits, and
# cfn-signal's refusal is harmless.
rpm -q aws-cfn-bootstrap >/dev/null 2>&1 || dnf install -y aws-cfn-bootstrap
cfn_signal() {{
  {CFN_SIGNAL} -e "$1" --stack {stack} --resource {resource} --region {region} \\
    || echo "quiver: no deploy is waiting for this node's signal" >&2
}}
new=""
on_exit() {{
  rc=$?
  rm -f "$new"
  if [ "$rc" != 0 ]; then cfn_signal 1; fi
  exit "$rc"
}}
trap on_exit EXIT

"""


def _log_shipping(log_group: str | None) -> str:
    if log_group is None:
        return ""
    config = json.dumps({"logs": {"logs_collected": {"files": {"collect_list": [{
        "file_path": HAPROXY_LOG,
        "log_group_name": _token(log_group, "log group"),
        "log_stream_name": "{instance_id}",
    }]}}}}, indent=2)
    return f"""\
# HAProxy's log leaves the node: the unit's stdout goes to {HAPROXY_LOG}
# (rotated daily, copytruncate: systemd keeps the file open), and the CloudWatch
# agent ships it to {log_group}, one stream per instance. A node that cannot ship
# logs still sends mail: an agent failure is reported here, not fatal.
rpm -q amazon-cloudwatch-agent logrotate >/dev/null 2>&1 \\
  || dnf install -y amazon-cloudwatch-agent logrotate
mkdir -p {HAPROXY_LOG.rsplit("/", 1)[0]} {UNIT_DROP_IN.rsplit("/", 1)[0]}
unit_changed=0
drop_in=$(mktemp)
cat > "$drop_in" <<'QUIVER_UNIT'
[Service]
StandardOutput=append:{HAPROXY_LOG}
StandardError=inherit
QUIVER_UNIT
if ! cmp -s "$drop_in" {UNIT_DROP_IN}; then
  mv -f "$drop_in" {UNIT_DROP_IN}
  chmod 0644 {UNIT_DROP_IN}
  systemctl daemon-reload
  unit_changed=1
else
  rm -f "$drop_in"
fi
cat > {LOGROTATE_PATH} <<'QUIVER_LOGROTATE'
{HAPROXY_LOG} {{
  daily
  rotate 7
  maxsize 200M
  compress
  missingok
  notifempty
  copytruncate
}}
QUIVER_LOGROTATE
cat > {CW_AGENT_CONFIG} <<'QUIVER_CW_AGENT'
{config}
QUIVER_CW_AGENT
{CW_AGENT_CTL} -a fetch-config -m ec2 -s -c file:{CW_AGENT_CONFIG} >/dev/null \\
  || echo "quiver: the CloudWatch agent did not start; HAProxy logs stay on the node" >&2

"""


def _health_gate(policy: Policy, node: str, signal: ResourceSignal | None) -> str:
    if signal is None:
        return ""
    address = policy.proxy.nodes[node].address
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{policy.proxy.health_port}/health"
    return f"""\
# Signal success only once HAProxy answers the health check senders use.
healthy=0
for _ in $(seq 1 {HEALTH_WAIT_ATTEMPTS}); do
  if curl -fsS -o /dev/null --max-time 2 {url}; then healthy=1; break; fi
  sleep 2
done
if [ "$healthy" != 1 ]; then
  echo "quiver: HAProxy does not answer {url}" >&2
  exit 1
fi
cfn_signal 0
"""


def _script(
    policy: Policy, node: str, addresses: list[str], write_config: str, extras: _Extras,
) -> str:
    az = policy.proxy.nodes[node].az
    signal = extras.signal
    cleanup = "" if signal is not None else "trap 'rm -f \"$new\"' EXIT\n"
    logs = _log_shipping(extras.log_group)
    restart = ""
    if extras.log_group is not None:
        restart = """\
elif [ "$unit_changed" = 1 ]; then
  # Once, when the log destination changes: a reload keeps the old stdout.
  systemctl restart haproxy
"""
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

{_signal_prologue(signal)}rpm -q haproxy >/dev/null 2>&1 || dnf install -y haproxy

cat > {SYSCTL_PATH} <<'QUIVER_SYSCTL'
{_SYSCTLS}QUIVER_SYSCTL
sysctl -q -p {SYSCTL_PATH} || echo "quiver: some kernel settings were not applied" >&2

{logs}{wait}# Written aside and validated first: a bad config never replaces a good one.
new=$(mktemp {CONFIG_PATH}.XXXXXX)
{cleanup}{write_config}chmod 0644 "$new"
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
{restart}elif [ "$changed" = 1 ]; then
  systemctl reload haproxy
fi
{_health_gate(policy, node, signal)}echo "quiver: egress node {node} ready"
"""
