"""haproxy.cfg rendering, EC2 user data and the render command, without running anything."""

from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from special_networks import overlapping

from proxy_tier import cli
from proxy_tier.__main__ import main as module_main
from proxy_tier.bootstrap import USER_DATA_LIMIT, render_user_data
from proxy_tier.render import (
    BLOCKED_NETWORKS,
    RenderError,
    node_sources,
    render_all,
    render_haproxy_config,
)
from quiver.policy import Policy, load_policy, parse_policy
from quiver.routing.proxy_probe import probe
from quiver.routing.safety import forbidden_ranges
from quiver.units import parse_duration

REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "policy" / "quiver.toml"
BLOCKED = [ipaddress.ip_network(net) for net, _ in BLOCKED_NETWORKS]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_FILE)


# The production policy marked as a one-machine policy: only such a policy may open
# loopback or private destinations on the proxies.
LOCAL_POLICY_TEXT = "local_only = true\n" + POLICY_FILE.read_text()
PRODUCTION = load_policy(POLICY_FILE)
LOCAL = parse_policy(LOCAL_POLICY_TEXT)


@pytest.fixture
def local_policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "local.toml"
    path.write_text(LOCAL_POLICY_TEXT)
    return path


def sections(config: str) -> dict[str, list[str]]:
    """'frontend egress_tx1' -> its directive lines (comments and blanks dropped)."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in config.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            words = line.split()
            current = out.setdefault(" ".join(words[:2]), [])
            current.append(line)
        else:
            current.append(line.strip())
    return out


def section_header(lines: list[str]) -> str:
    return lines[0]


def many_sources_policy(count: int) -> Policy:
    lines = [
        'default_pool = "p"',
        "[proxy]",
        "[proxy.nodes.big]",
        'az = "az-1"',
        'address = "10.61.0.10"',
    ]
    names = []
    for i in range(count):
        name = f"bulk-source-{i:03d}"
        names.append(f'"{name}"')
        lines += [
            f"[sources.{name}]",
            f'ip = "203.0.{i // 250}.{i % 250 + 1}"',
            f'local_ip = "10.61.{i // 250 + 1}.{i % 250 + 1}"',
            'node = "big"',
            f'ehlo = "{name}.mail.example.com"',
        ]
    lines += ["[pools.p]", f"sources = [{', '.join(names)}]"]
    return parse_policy("\n".join(lines))


# --- what each node's config contains --------------------------------------------------


def test_one_frontend_and_backend_per_source_on_the_node(policy):
    for node in policy.proxy.nodes:
        parsed = sections(render_haproxy_config(policy, node))
        expected = {s.name for s in policy.sources.values() if s.node == node}
        frontends = {k.split()[1] for k in parsed if k.startswith("frontend egress_")}
        backends = {k.split()[1] for k in parsed if k.startswith("backend egress_")}
        assert frontends == {f"egress_{name}" for name in expected}
        assert backends == frontends
        assert [s.name for s in node_sources(policy, node)] == [
            s.name for s in policy.sources.values() if s.node == node
        ]


def test_frontends_bind_local_ip_with_accept_proxy_and_backends_leave_from_it(policy):
    parsed = sections(render_haproxy_config(policy, "egress-a"))
    for source in ("tx1", "bulk1"):
        local_ip = policy.sources[source].local_ip
        frontend = parsed[f"frontend egress_{source}"]
        assert section_header(frontend) == f"frontend egress_{source} from egress_in"
        assert f"bind {local_ip}:2500 accept-proxy" in frontend
        assert f"default_backend egress_{source}" in frontend
        backend = parsed[f"backend egress_{source}"]
        assert section_header(backend) == f"backend egress_{source} from egress_out"
        assert f"source {local_ip}" in backend
        assert "server dst 0.0.0.0:0" in backend
    # egress-a's config knows nothing of egress-b's sources.
    assert "10.60.1.11" not in render_haproxy_config(policy, "egress-a")


def test_every_egress_bind_requires_the_proxy_protocol(policy):
    for config in render_all(policy).values():
        for name, lines in sections(config).items():
            binds = [line for line in lines if line.startswith("bind ")]
            if name.startswith("frontend egress_"):
                assert binds and all(line.endswith(" accept-proxy") for line in binds)


def test_destination_checks_run_where_the_proxy_header_is_known(policy):
    config = render_haproxy_config(policy, "egress-a")
    parsed = sections(config)
    # Connection-stage rules see the frontend's own address, not the header's.
    assert "tcp-request connection" not in config
    egress_in = parsed["defaults egress_in"]
    assert "tcp-request session reject unless { dst_port 25 }" in egress_in
    assert "tcp-request session reject if dst_blocked" in egress_in
    egress_out = parsed["defaults egress_out"]
    assert "tcp-request content reject unless { dst_port 25 }" in egress_out
    assert "tcp-request content reject if dst_blocked" in egress_out
    for section in ("defaults egress_in", "defaults egress_out"):
        acl = next(line for line in parsed[section] if line.startswith("acl dst_blocked dst "))
        assert acl.split()[3:] == [net for net, _ in BLOCKED_NETWORKS]
    # Production allows no special network.
    assert "dst_allowed" not in config
    # An IPv4 source refuses destinations that are neither IPv4 nor IPv4-mapped.
    assert "tcp-request session reject unless { dst 0.0.0.0/0 }" in parsed["frontend egress_tx1"]


def test_allowed_ports_come_from_the_policy(policy):
    text = POLICY_FILE.read_text().replace("allowed_ports = [25]", "allowed_ports = [25, 2525]")
    config = render_haproxy_config(parse_policy(text), "egress-b")
    assert config.count("{ dst_port 25 2525 }") == 2


def test_allow_networks_from_the_policy_or_the_caller(policy):
    text = LOCAL_POLICY_TEXT.replace(
        "allowed_ports = [25]", 'allowed_ports = [25]\nallow_networks = ["127.0.0.0/8"]'
    )
    parsed = sections(render_haproxy_config(parse_policy(text), "egress-a"))
    assert "acl dst_allowed dst 127.0.0.0/8" in parsed["defaults egress_in"]
    assert "tcp-request session reject if dst_blocked !dst_allowed" in parsed["defaults egress_in"]
    assert "tcp-request content reject if dst_blocked !dst_allowed" in parsed["defaults egress_out"]
    override = sections(render_haproxy_config(
        parse_policy(text), "egress-a", allow_networks=["127.0.0.1/30"]
    ))
    assert "acl dst_allowed dst 127.0.0.0/30" in override["defaults egress_in"]
    assert "dst_allowed" not in str(sections(
        render_haproxy_config(parse_policy(text), "egress-a", allow_networks=[])
    ))


@pytest.mark.parametrize("network", ["169.254.0.0/16", "0.0.0.0/0", "fd00::/8", "::/0"])
def test_metadata_service_can_never_be_allowed(policy, network):
    for subject in (policy, parse_policy(LOCAL_POLICY_TEXT)):
        with pytest.raises(RenderError, match="metadata"):
            render_haproxy_config(subject, "egress-a", allow_networks=[network])


SPECIAL = sorted(
    {str(net) for net, _ in forbidden_ranges()} | {net for net, _ in BLOCKED_NETWORKS},
    key=lambda n: (ipaddress.ip_network(n).version, ipaddress.ip_network(n)),
)


def holds_metadata(network: str) -> bool:
    net = ipaddress.ip_network(network)
    return any(ipaddress.ip_address(m) in net for m in ("169.254.169.254", "fd00:ec2::254"))


@given(overlapping(SPECIAL))
def test_special_ranges_are_allowed_only_for_a_local_only_policy(case):
    network, special = case
    with pytest.raises(RenderError) as refused:
        render_haproxy_config(PRODUCTION, "egress-a", allow_networks=[network])
    message = str(refused.value)
    assert "metadata" in message or (
        "opens destinations the proxy must refuse" in message and f"{special}:" in message
    ), message
    if holds_metadata(network):
        return  # refused for every policy: test_metadata_service_can_never_be_allowed
    config = render_haproxy_config(LOCAL, "egress-a", allow_networks=[network])
    assert f"acl dst_allowed dst {ipaddress.ip_network(network)}" in config


def test_a_deployable_policy_may_name_public_networks_which_open_nothing():
    config = render_haproxy_config(PRODUCTION, "egress-a", allow_networks=["8.8.8.0/24"])
    assert "acl dst_allowed dst 8.8.8.0/24" in config


@pytest.mark.parametrize("networks", [["not-a-net"], "127.0.0.0/8", [None]])
def test_bad_allow_networks_are_refused(policy, networks):
    with pytest.raises(RenderError, match="allow_networks"):
        render_haproxy_config(policy, "egress-a", allow_networks=networks)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0", "10.1.2.3", "10.60.0.10", "172.16.0.1", "172.31.255.255", "192.168.1.1",
        "100.64.0.1", "127.0.0.1", "169.254.169.254", "169.254.1.1", "224.0.0.1",
        "239.255.255.250", "255.255.255.255", "::", "::1", "fd00:ec2::254", "fc00::1",
        "fe80::1", "ff02::1", "64:ff9b::a00:1", "2002:a00:1::1", "2001::a00:1", "::a00:1",
    ],
)
def test_blocked_networks_cover_every_internal_destination(address):
    ip = ipaddress.ip_address(address)
    assert any(ip in net for net in BLOCKED)


@pytest.mark.parametrize("address", ["8.8.8.8", "142.250.0.27", "2607:f8b0:4004:c1b::1b"])
def test_blocked_networks_leave_public_mx_addresses_alone(address):
    ip = ipaddress.ip_address(address)
    assert not any(ip in net for net in BLOCKED)


@given(st.ip_addresses())
def test_every_non_global_address_is_blocked(ip):
    # IPv4-mapped destinations are checked as IPv4 by HAProxy (no IPv6 pattern may
    # cover them, or every IPv4 destination would match); see the integration tests.
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        assert any(ip in net for net in BLOCKED), ip


def test_no_ipv6_pattern_covers_mapped_ipv4():
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    assert not any(net.version == 6 and net.overlaps(mapped) for net in BLOCKED)


def test_timeouts_fit_smtp(policy):
    parsed = sections(render_haproxy_config(policy, "egress-a"))
    base = dict(
        line.rsplit(" ", 1) for line in parsed["defaults base"] if line.startswith("timeout")
    )
    assert parse_duration(base["timeout connect"]) == 10
    # RFC 5321 4.5.3.2: 5 minutes per command, 10 minutes for the reply to DATA's ".".
    assert parse_duration(base["timeout client"]) >= 300
    assert parse_duration(base["timeout server"]) >= 600
    retries = next(line for line in parsed["defaults egress_out"] if line.startswith("retries"))
    assert int(retries.split()[1]) <= 1
    # One attempt plus the retry fit in the sender's connect timeout.
    assert parse_duration(base["timeout connect"]) * 2 < policy.delivery.connect_timeout


def test_maxconn_per_source_and_global(policy):
    parsed = sections(render_haproxy_config(policy, "egress-a", maxconn_per_source=500))
    assert "maxconn 500" in parsed["defaults egress_in"]
    assert "maxconn 1064" in parsed["global"]  # two sources + the health listener


def test_health_endpoint_and_stats_socket(policy):
    parsed = sections(render_haproxy_config(policy, "egress-c", stats_socket="/run/x.sock"))
    health = parsed["frontend health"]
    assert "mode http" in health
    assert "bind 10.60.2.10:8500" in health
    assert "monitor-uri /health" in health
    assert "monitor fail if { nbsrv(drain) eq 0 }" in health
    assert "stats socket /run/x.sock mode 600 level admin" in parsed["global"]
    assert "log stdout format raw local0 info" in parsed["global"]
    no_socket = render_haproxy_config(policy, "egress-c", stats_socket=None)
    assert not any(line.startswith("stats socket") for line in sections(no_socket)["global"])


def test_log_target_and_process_options(policy):
    parsed = sections(render_haproxy_config(
        policy, "egress-a", log_target="/dev/log local0", pidfile="/run/h.pid",
        run_as="haproxy", chroot="/var/lib/haproxy",
    ))
    assert {"log /dev/log local0", "pidfile /run/h.pid", "user haproxy", "group haproxy",
            "chroot /var/lib/haproxy"} <= set(parsed["global"])


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("stats_socket", "/tmp/x.sock\n    bind 0.0.0.0:25"),
        ("stats_socket", "/tmp/x y.sock"),
        ("pidfile", "/run/h.pid\nfrontend x"),
        ("log_target", "stdout\n    bind 0.0.0.0:25"),
        ("run_as", "root\n"),
        ("chroot", "/var/lib/haproxy\r"),
    ],
)
def test_options_cannot_inject_directives(policy, option, value):
    with pytest.raises(RenderError, match=option):
        render_haproxy_config(policy, "egress-a", **{option: value})


def test_unknown_node_lists_the_known_ones(policy):
    with pytest.raises(RenderError, match=r"unknown proxy node 'egress-z'; known nodes: "
                       r"egress-a, egress-b, egress-c"):
        render_haproxy_config(policy, "egress-z")


def test_policy_without_nodes_says_so():
    bare = parse_policy('default_pool = "p"\n[sources.a]\nip = "192.0.2.1"\nehlo = "a.example.com"'
                        '\n[pools.p]\nsources = ["a"]')
    with pytest.raises(RenderError, match=r"defines no \[proxy.nodes\]"):
        render_haproxy_config(bare, "egress-a")
    assert render_all(bare) == {}


def test_frontend_port_may_not_be_an_allowed_port():
    text = POLICY_FILE.read_text().replace("allowed_ports = [25]", "allowed_ports = [25, 2500]")
    with pytest.raises(RenderError, match=r"frontend_port 2500 is also in proxy\.allowed_ports"):
        render_haproxy_config(parse_policy(text), "egress-a")


def test_render_all_renders_every_node(policy):
    configs = render_all(policy)
    assert set(configs) == set(policy.proxy.nodes)
    for node, config in configs.items():
        assert config == render_haproxy_config(policy, node)


def test_ipv6_sources_bind_in_brackets_and_refuse_ipv4_destinations():
    text = POLICY_FILE.read_text().replace('local_ip = "10.60.0.11"', 'local_ip = "2001:db8::11"')
    parsed = sections(render_haproxy_config(parse_policy(text), "egress-a"))
    assert "bind [2001:db8::11]:2500 accept-proxy" in parsed["frontend egress_tx1"]
    assert "tcp-request session reject if { dst 0.0.0.0/0 }" in parsed["frontend egress_tx1"]
    assert "source [2001:db8::11]" in parsed["backend egress_tx1"]


RENDER = (
    "import sys; from proxy_tier.render import render_haproxy_config; "
    "from quiver.policy import load_policy; "
    "sys.stdout.write(render_haproxy_config(load_policy(sys.argv[1]), 'egress-a'))"
)


def test_rendering_is_deterministic_across_processes(policy):
    """Same policy, same bytes: in other processes with other hash seeds (set and dict
    order of strings vary with the seed) as in this one, so a node's config never
    changes without a policy change."""
    here = render_haproxy_config(policy, "egress-a")
    for seed in ("1", "2"):
        other = subprocess.run(
            [sys.executable, "-c", RENDER, str(POLICY_FILE)], check=True, timeout=60,
            capture_output=True, text=True, cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed,
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                             os.environ.get("PYTHONPATH")]))},
        )
        assert other.stdout == here


# --- user data ---------------------------------------------------------------------------


def embedded_config(script: str, tmp_path: Path) -> str:
    """Run only the script's config-writing step, in a temp dir, and return what it wrote."""
    start = script.index('new=$(mktemp')
    end = script.index('chmod 0644 "$new"')
    snippet = script[start:end].replace(
        "$(mktemp /etc/haproxy/haproxy.cfg.XXXXXX)", str(tmp_path / "haproxy.cfg.new")
    ).replace("trap 'rm -f \"$new\"' EXIT", "")
    assert "mktemp" not in snippet and "trap" not in snippet
    subprocess.run(["bash", "-euo", "pipefail", "-c", snippet], check=True, timeout=30)
    return (tmp_path / "haproxy.cfg.new").read_text()


def test_user_data_fits_ec2_and_is_valid_bash(policy, tmp_path):
    for node in policy.proxy.nodes:
        script = render_user_data(policy, node)
        assert script.startswith("#!/bin/bash\n")
        assert len(script.encode()) <= USER_DATA_LIMIT
        path = tmp_path / f"{node}.sh"
        path.write_text(script)
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)


def test_user_data_embeds_the_production_config(policy, tmp_path):
    script = render_user_data(policy, "egress-a")
    expected = render_haproxy_config(
        policy, "egress-a", run_as="haproxy", chroot="/var/lib/haproxy"
    )
    assert embedded_config(script, tmp_path) == expected
    assert "stats socket /var/lib/haproxy/admin.sock" in expected


def test_user_data_is_idempotent_and_validates_before_replacing(policy):
    script = render_user_data(policy, "egress-a")
    steps = [
        "rpm -q haproxy >/dev/null 2>&1 || dnf install -y haproxy",
        "sysctl -q -p /etc/sysctl.d/90-quiver-egress.conf",
        'haproxy -c -q -f "$new"',
        'if cmp -s "$new" /etc/haproxy/haproxy.cfg; then',
        'mv -f "$new" /etc/haproxy/haproxy.cfg',
        "systemctl enable haproxy",
        "systemctl start haproxy",
        "systemctl reload haproxy",
    ]
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "set -Eeuo pipefail" in script
    assert "for addr in 10.60.0.11 10.60.0.12; do" in script
    for setting in ("net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse",
                    "net.ipv4.ip_nonlocal_bind"):
        assert re.search(rf"^{re.escape(setting)} = ", script, re.M)
    assert render_user_data(policy, "egress-a") == script


def test_user_data_compresses_a_large_config(tmp_path):
    policy = many_sources_policy(60)
    script = render_user_data(policy, "big")
    assert len(script.encode()) <= USER_DATA_LIMIT
    assert "base64 -d <<'QUIVER_HAPROXY_CFG' | gzip -dc" in script
    expected = render_haproxy_config(policy, "big", run_as="haproxy", chroot="/var/lib/haproxy")
    assert len(expected.encode()) > USER_DATA_LIMIT
    assert embedded_config(script, tmp_path) == expected
    body = script.split("| gzip -dc > \"$new\"\n", 1)[1].split("\nQUIVER_HAPROXY_CFG", 1)[0]
    assert gzip.decompress(base64.b64decode(body)).decode() == expected


def test_user_data_too_large_even_compressed_is_an_error():
    with pytest.raises(RenderError, match="over EC2's 16384"):
        render_user_data(many_sources_policy(700), "big")


def test_user_data_unknown_node(policy):
    with pytest.raises(RenderError, match="known nodes"):
        render_user_data(policy, "nope")


# --- the render command -------------------------------------------------------------------


def test_render_command_prints_the_config(policy):
    out, err = io.StringIO(), io.StringIO()
    assert cli.render_command(str(POLICY_FILE), "egress-b", out, err=err) == cli.EXIT_OK
    assert out.getvalue() == render_haproxy_config(policy, "egress-b")
    assert err.getvalue() == ""


def test_render_command_user_data(policy):
    out = io.StringIO()
    code = cli.render_command(str(POLICY_FILE), "egress-b", out, user_data=True,
                              err=io.StringIO())
    assert code == cli.EXIT_OK
    assert out.getvalue() == render_user_data(policy, "egress-b")


def test_render_command_allow_networks(local_policy_file):
    out = io.StringIO()
    code = cli.render_command(str(local_policy_file), "egress-b", out,
                              allow_networks=["127.0.0.0/8"], err=io.StringIO())
    assert code == cli.EXIT_OK
    assert "acl dst_allowed dst 127.0.0.0/8" in out.getvalue()


def test_render_command_refuses_to_open_loopback_for_a_deployable_policy():
    out, err = io.StringIO(), io.StringIO()
    code = cli.render_command(str(POLICY_FILE), "egress-b", out, allow_networks=["127.0.0.0/8"],
                              err=err)
    assert code == cli.EXIT_INVALID
    assert out.getvalue() == ""
    assert "127.0.0.0/8 opens destinations the proxy must refuse" in err.getvalue()
    assert "local_only = true" in err.getvalue()


def test_render_command_unknown_node():
    out, err = io.StringIO(), io.StringIO()
    assert cli.render_command(str(POLICY_FILE), "egress-z", out, err=err) == cli.EXIT_USAGE
    assert out.getvalue() == ""
    assert "unknown proxy node 'egress-z'" in err.getvalue()
    assert "known nodes: egress-a, egress-b, egress-c" in err.getvalue()


def test_render_command_invalid_policy(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('default_pool = "nope"\n')
    out, err = io.StringIO(), io.StringIO()
    assert cli.render_command(str(bad), "egress-a", out, err=err) == cli.EXIT_INVALID
    assert out.getvalue() == ""
    assert "default_pool" in err.getvalue()
    assert "quiver config check" in err.getvalue()


def test_render_command_missing_file(tmp_path):
    err = io.StringIO()
    code = cli.render_command(str(tmp_path / "absent.toml"), "a", io.StringIO(), err=err)
    assert code == cli.EXIT_INVALID
    assert "cannot read" in err.getvalue()


def test_render_command_render_error_is_reported(tmp_path):
    text = POLICY_FILE.read_text().replace("allowed_ports = [25]", "allowed_ports = [8500]")
    path = tmp_path / "loop.toml"
    path.write_text(text)
    err = io.StringIO()
    assert cli.render_command(str(path), "egress-a", io.StringIO(), err=err) == cli.EXIT_INVALID
    assert "health_port 8500" in err.getvalue()


def test_module_entry_point(capsys, local_policy_file):
    code = module_main(["render", "--config", str(local_policy_file), "--node", "egress-c",
                        "--allow-network", "127.0.0.0/8"])
    assert code == 0
    assert capsys.readouterr().out == render_haproxy_config(
        load_policy(local_policy_file), "egress-c", allow_networks=["127.0.0.0/8"]
    )


# --- health probe arguments (refused before any connection) -------------------------------


@pytest.mark.parametrize(
    ("address", "port"),
    [("10.60.0.10\r\nX: y", 8500), ("10.60.0.10\n", 8500), ("", 8500), ("a b", 8500),
     ("10.60.0.10", 0), ("10.60.0.10", 65536), ("10.60.0.10", True)],
)
async def test_probe_refuses_bad_arguments(address, port):
    with pytest.raises(ValueError, match="not a"):
        await probe(address, port, timeout=1.0)
