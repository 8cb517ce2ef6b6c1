"""A policy cannot open the VPC: allow-lists reaching forbidden ranges need `local_only`."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from special_networks import overlapping

from quiver.cli import main
from quiver.policy import PolicyError, parse_policy
from quiver.routing.safety import forbidden_overlaps, forbidden_ranges

MINIMAL = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""
FORBIDDEN = [str(net) for net, _ in forbidden_ranges()]
WHY = {str(net): why for net, why in forbidden_ranges()}
SECTIONS = ("delivery", "proxy")


def with_allow(section: str, networks: list[str], *, local_only: bool | None = None) -> str:
    head = "" if local_only is None else f"local_only = {str(local_only).lower()}\n"
    listed = ", ".join(f'"{n}"' for n in networks)
    return head + MINIMAL + f"\n[{section}]\nallow_networks = [{listed}]\n"


@given(overlapping(FORBIDDEN), st.sampled_from(SECTIONS))
def test_any_network_reaching_a_forbidden_range_is_refused(case, section) -> None:
    network, forbidden = case
    with pytest.raises(PolicyError) as refused:
        parse_policy(with_allow(section, ["192.0.2.0/24", network]))
    (problem,) = refused.value.problems
    assert problem.startswith(f"{section}.allow_networks[1]: {network} opens forbidden "
                              "destinations: ")
    # The class and the range it overlaps are named, and what to do about it.
    assert f"{WHY[str(forbidden)]} (" in problem and str(forbidden) in problem
    assert "local_only = true" in problem


@given(overlapping(FORBIDDEN), st.sampled_from(SECTIONS))
def test_a_local_only_policy_may_allow_them(case, section) -> None:
    network, _ = case
    policy = parse_policy(with_allow(section, [network], local_only=True))
    assert policy.local_only is True
    assert getattr(policy, section).allow_networks == (
        str(ipaddress.ip_network(network, strict=False)),
    )


@given(st.one_of(
    st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
              st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
              st.integers(0, 2**128 - 1), st.integers(0, 128)),
))
def test_networks_clear_of_the_table_need_no_local_only(network) -> None:
    text = with_allow("delivery", [str(network)])
    if forbidden_overlaps(network):
        with pytest.raises(PolicyError, match=r"delivery\.allow_networks\[0\]"):
            parse_policy(text)
    else:
        assert parse_policy(text).delivery.allow_networks == (str(network),)


@pytest.mark.parametrize(("network", "classes"), [
    ("0.0.0.0/0", ["unspecified", "private", "carrier-grade NAT", "loopback",
                   "link-local / instance metadata", "reserved", "multicast"]),
    ("::/0", ["unique local", "link-local", "instance metadata", "loopback", "private"]),
    # HAProxy and the sender read ::ffff:a.b.c.d as IPv4: this is 10.0.0.0/8.
    ("::ffff:10.0.0.0/104", ["private (10.0.0.0/8)"]),
    ("169.254.169.254/32", ["link-local / instance metadata (169.254.0.0/16)"]),
    ("100.64.1.0/24", ["carrier-grade NAT (100.64.0.0/10)"]),
])
def test_the_problem_names_every_class_reached(network: str, classes: list[str]) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(with_allow("proxy", [network], local_only=False))
    for name in classes:
        assert name in str(refused.value)


def test_local_only_is_a_boolean_and_defaults_to_false() -> None:
    assert parse_policy(MINIMAL).local_only is False
    with pytest.raises(PolicyError, match="local_only: expected true or false, got 'yes'"):
        parse_policy('local_only = "yes"\n' + MINIMAL)


def test_local_only_belongs_at_the_top_level() -> None:
    # One switch for the whole file: both allow-lists and the deploy refusal.
    with pytest.raises(PolicyError, match=r"delivery\.local_only: unknown key"):
        parse_policy(MINIMAL + "\n[delivery]\nlocal_only = true\n")


def test_config_check_reports_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "open.toml"
    path.write_text(with_allow("delivery", ["0.0.0.0/0"]))
    assert main(["config", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: 1 problem(s)\n  delivery.allow_networks[0]: 0.0.0.0/0 "
                          "opens forbidden destinations: unspecified (0.0.0.0/8), private "
                          "(10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)")
    assert err.rstrip().endswith("only a policy with local_only = true (a local stack's, "
                                 "which the CDK app refuses to deploy) may allow them")
    path.write_text(with_allow("delivery", ["127.0.0.0/8"], local_only=True))
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok")
