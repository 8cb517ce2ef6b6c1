"""EC2 user data that turns an Amazon Linux 2023 instance into an egress node.

The script installs HAProxy, sets kernel limits for many outbound SMTP
connections, waits for the sources' secondary private IPs, writes the config
rendered from the policy, validates it with `haproxy -c`, and starts HAProxy or
reloads it. Running it again with the same policy changes nothing; with a new
policy it reloads without dropping connections.

Deployed (the CDK app passes both): HAProxy's log goes to a file that the
CloudWatch agent ships to `log_group`, so the node's logs outlive it; and once
HAProxy answers its own health check the script PUTs a SUCCESS signal to
`signal_url`, the presigned S3 URL of the node's CloudFormation wait condition
handle (cdk/proxy_tier.py), so a deploy that starts or restarts a node waits for it
to serve before it touches the next one. Any failure before that signals FAILURE
with the reason at once, and the deploy stops and rolls back.

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
# The health check must pass within this (attempts x 2 s) before the node signals.
HEALTH_WAIT_ATTEMPTS = 60
HEALTH_WAIT_SECONDS = 2
# The wait condition's presigned URL is known only at deploy time. Synth sizes the
# user data with a stand-in this long: the documented URLs are under 1 KB (bucket,
# stack ARN, logical ID, SigV4 query); twice that leaves room for a session token.
SIGNAL_URL_BUDGET = 2048
SIGNAL_URL_STAND_IN = "https://" + "x" * (SIGNAL_URL_BUDGET - len("https://"))
# PUT attempts and the pause between them: S3 through the gateway endpoint may
# refuse a first request while the route or DNS settles after boot; 5 tries over
# ~1 minute, well inside the wait condition's timeout.
SIGNAL_ATTEMPTS = 5
SIGNAL_RETRY_SECONDS = 3
SIGNAL_MAX_TIME_SECONDS = 10
# CloudFormation shows the reason in the stack's events; a longer one is cut.
SIGNAL_REASON_MAX = 200


# Every script starts so: any failing command ends it (ERR traps included in
# functions), and `fail` ends it with a reason the wait condition's signal carries.
_STRICT = """\
set -Eeuo pipefail
failed=""
fail() {
  failed="$1"
  echo "quiver: $1" >&2
  exit 1
}
"""

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
    policy: Policy, node: str, *, signal_url: str | None = None,
    log_group: str | None = None, room: int = USER_DATA_LIMIT,
) -> str:
    """The bash user-data script of proxy node `node`. Raises RenderError.

    The config is embedded as text when the script fits EC2's 16 KB limit, and
    gzip+base64 otherwise (a node with many sources). `signal_url`: the wait
    condition handle's presigned URL that gets SUCCESS once HAProxy is healthy (a
    CloudFormation token at synth: the size is checked as if the URL were
    SIGNAL_URL_BUDGET bytes); `log_group`: where the CloudWatch agent ships HAProxy's
    log; `room`: the bytes the script may take (less than EC2's limit when the caller
    wraps it, as the CDK app does in MIME).
    """
    config = render_haproxy_config(
        policy, node, stats_socket=DEFAULT_STATS_SOCKET, run_as=HAPROXY_USER, chroot=HAPROXY_HOME
    )
    addresses = [s.local_ip for s in node_sources(policy, node) if s.local_ip]
    extras = _Extras(signal_url=None if signal_url is None else _signal_url(signal_url),
                     log_group=log_group)
    # The URL is filled in at deploy: count it at its largest.
    budget = 0 if signal_url is None else SIGNAL_URL_BUDGET - len(signal_url.encode())
    script = _script(policy, node, addresses, _plain(config), extras)
    if len(script.encode()) + budget > room:
        script = _script(policy, node, addresses, _compressed(config), extras)
    size = len(script.encode()) + budget
    if size > room:
        with_url = "" if signal_url is None else (
            f" with room for the {SIGNAL_URL_BUDGET}-byte signal URL")
        limit = f"EC2's {USER_DATA_LIMIT}" if room == USER_DATA_LIMIT else (
            f"the {room} left of EC2's {USER_DATA_LIMIT} by what wraps it")
        raise RenderError(
            f"user data for node {node!r} is {size} bytes{with_url}, over {limit}: "
            "place fewer sources on this node"
        )
    return script


def render_ready_check(
    policy: Policy, node: str, *, signal_url: str,
    health_attempts: int = HEALTH_WAIT_ATTEMPTS,
) -> str:
    """The bootstrap's last step alone, as a script: wait for HAProxy's health check,
    then PUT SUCCESS to `signal_url`, or FAILURE with the reason. The user data runs
    exactly this text after it has started HAProxy; tests run it against a real one."""
    if health_attempts < 1:
        raise ValueError("health_attempts must be at least 1")
    url = _signal_url(signal_url)
    return (
        f"#!/bin/bash\n{_STRICT}\n"
        + _signal_prologue(node, url)
        + _health_gate(policy, node, url, attempts=health_attempts)
    )


def _signal_url(url: str) -> str:
    # Single-quoted in the script: a presigned URL has no quote, space or newline.
    if not url or any(c in url for c in "'\\\n\r\t "):
        raise RenderError("the signal URL has characters a bootstrap cannot carry")
    if len(url.encode()) > SIGNAL_URL_BUDGET:
        raise RenderError(
            f"the signal URL is {len(url.encode())} bytes, over the {SIGNAL_URL_BUDGET} "
            "the user data was sized for"
        )
    return url


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
    signal_url: str | None
    log_group: str | None


def _token(value: str, what: str) -> str:
    # Interpolated into shell and JSON: plain names only.
    if not value or not all(c.isalnum() or c in "-_./:#" for c in value):
        raise RenderError(f"{what} {value!r} has characters a bootstrap cannot carry")
    return value


def signal_functions(node: str) -> str:
    """Shell functions that send the wait condition's signal: `signal_body STATUS
    REASON` prints the JSON document CloudFormation reads, `signal_ready STATUS
    REASON` PUTs it to `$signal_url` (bounded retries; never fails the script)."""
    unique_id = _token(node, "node")
    return f"""\
json_text() {{
  # The contents of a JSON string: the first {SIGNAL_REASON_MAX} characters, printable
  # ASCII only (a reason quotes shell commands), \\ and " escaped.
  printf '%s' "${{1:0:{SIGNAL_REASON_MAX}}}" | tr -cd '\\040-\\176' \\
    | sed -e 's/\\\\/\\\\\\\\/g' -e 's/"/\\\\"/g'
}}
signal_body() {{
  local reason
  reason=$(json_text "$2")
  printf '{{"Status":"%s","Reason":"%s","UniqueId":"%s","Data":"%s"}}\\n' \\
    "$1" "$reason" {unique_id} "$reason"
}}
signal_ready() {{
  local body attempt
  body=$(signal_body "$1" "$2")
  # Content-Type empty: the URL was presigned without one. The S3 gateway endpoint
  # carries the PUT; the node cannot reach CloudFormation's API.
  for attempt in $(seq 1 {SIGNAL_ATTEMPTS}); do
    if curl -fsS -o /dev/null --max-time {SIGNAL_MAX_TIME_SECONDS} -X PUT -H 'Content-Type:' \\
        --data-binary "$body" "$signal_url"; then
      echo "quiver: signalled $1 to the deploy"
      return 0
    fi
    if [ "$attempt" != {SIGNAL_ATTEMPTS} ]; then sleep {SIGNAL_RETRY_SECONDS}; fi
  done
  # At a later boot the URL has expired (24 h) and nothing waits: not an error.
  echo "quiver: could not signal $1 (no deploy waiting, or S3 unreachable)" >&2
}}
"""


def _signal_prologue(node: str, signal_url: str | None) -> str:
    if signal_url is None:
        return ""
    return f"""\
# A deploy that starts or restarts this node waits for one signal (the node's wait
# condition, cdk/proxy_tier.py): SUCCESS once HAProxy answers its health check, or
# FAILURE with the reason as soon as a step fails; the deploy then stops at this
# node and rolls back. A later boot's signal finds nothing waiting, harmlessly.
signal_url='{signal_url}'
{signal_functions(node)}trap 'failed=${{failed:-"exit $? at: $BASH_COMMAND"}}' ERR
new=""
on_exit() {{
  local rc=$?
  rm -f "$new"
  if [ "$rc" != 0 ]; then signal_ready FAILURE "node {node}: ${{failed:-exit $rc}}"; fi
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


def _health_gate(
    policy: Policy, node: str, signal_url: str | None, *, attempts: int = HEALTH_WAIT_ATTEMPTS,
) -> str:
    if signal_url is None:
        return ""
    address = policy.proxy.nodes[node].address
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{policy.proxy.health_port}/health"
    return f"""\
# Signal success only once HAProxy answers the health check senders use.
healthy=0
for attempt in $(seq 1 {attempts}); do
  if curl -fsS -o /dev/null --max-time 2 {url}; then healthy=1; break; fi
  if [ "$attempt" != {attempts} ]; then sleep {HEALTH_WAIT_SECONDS}; fi
done
if [ "$healthy" != 1 ]; then
  fail "HAProxy does not answer {url}"
fi
signal_ready SUCCESS "node {node}: HAProxy answers {url}"
"""


def _script(
    policy: Policy, node: str, addresses: list[str], write_config: str, extras: _Extras,
) -> str:
    az = policy.proxy.nodes[node].az
    signal_url = extras.signal_url
    cleanup = "" if signal_url is not None else "trap 'rm -f \"$new\"' EXIT\n"
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
    fail "$addr is not on any interface; check the ENI's secondary IPs"
  fi
done

"""
    return f"""\
#!/bin/bash
# Quiver egress node {node} ({az}): HAProxy with the config rendered from the
# policy. Safe to run again: an unchanged config changes nothing, a new one is
# validated and then reloaded without dropping connections.
{_STRICT}
{_signal_prologue(node, signal_url)}rpm -q haproxy >/dev/null 2>&1 || dnf install -y haproxy

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
{_health_gate(policy, node, signal_url)}echo "quiver: egress node {node} ready"
"""
